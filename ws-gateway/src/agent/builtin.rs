//! The demo agent behind `builtin` routes: the `demo-agent` crate, reached in process over the
//! protocol's messages.

use async_trait::async_trait;
use demo_agent::DemoAgent;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::agent::v1::{AgentMessage, GatewayMessage};

use super::backend::LocalAgent;

#[async_trait]
impl LocalAgent for DemoAgent {
    async fn run(
        &self,
        inbound: ReceiverStream<GatewayMessage>,
        outbound: mpsc::Sender<AgentMessage>,
    ) {
        DemoAgent::run(self, inbound, outbound).await;
    }
}
