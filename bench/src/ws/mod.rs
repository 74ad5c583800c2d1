//! What `ws-loadgen` needs to load ws-gateway the way clients and backends do: the stack it runs
//! against ([`stack`]), the baseline WebSocket server ([`echo`]), WebSocket clients
//! ([`client`]), the connect phase ([`connects`]), metered messages ([`messages`], with a Node baseline in [`node`]), the open-loop publisher and its receivers
//! ([`publish`]), the same across several gateway processes on Redis ([`nodes`]), agent runs in process against external ([`runs`]), deltas streamed end to
//! end from a paced backend ([`pace`], [`pacer`], [`deltas`]), runs resumed at once after a drop
//! ([`resumes`]), what the run observes besides latency: CPU per process and the gateway's own
//! counters ([`observe`]), and the results table ([`table`]).
//!
//! Why the gateway runs as a process of its own: its CPU can then be told apart from the
//! load generator's and from auth-service's and usage-service's (which run in the load
//! generator's process, on a runtime of their own), and the baseline server gets exactly the
//! same treatment, so the ratio of the two compares servers, not process layouts.

pub mod client;
pub mod connects;
pub mod deltas;
pub mod echo;
pub mod http;
pub mod messages;
pub mod node;
pub mod nodes;
pub mod observe;
pub mod pace;
pub mod pacer;
pub mod publish;
pub mod resumes;
pub mod runs;
pub mod stack;
pub mod table;
