//! One benchmark run, start to finish: create the database, start the service, prepare users,
//! run the phases in a fixed order (each baseline alternating with what it is compared with),
//! stop the service and drop the database whatever happened in between.

use std::time::Duration;

use anyhow::Context as _;

use crate::{
    Args,
    argon::RawArgon,
    cli::{DatabaseKind, Phase, RawMemory, SETTLE},
    database::Database,
    load::Measurement,
    phases::Fixture,
    report::{self, Row},
    server::{Server, ServerSettings},
};

/// Targets from the issue.
const VALIDATE_MIN_RATIO: f64 = 0.7;
const VALIDATE_MAX_P99: Duration = Duration::from_millis(2);
const REFRESH_MIN_PER_CORE: f64 = 1000.0;
const SERVICE_TOKEN_MIN_PER_CORE: f64 = 2000.0;
const LOGIN_MIN_RATIO: f64 = 0.9;

/// Runs everything and prints the report on stdout (progress goes to stderr).
pub async fn run(args: Args) -> anyhow::Result<()> {
    let cores = crate::cores();
    let database = Database::create(args.database, &args.postgres_url).await?;
    eprintln!("auth-bench: store {}", database.describe());
    // On Ctrl-C the database is still dropped (with FORCE, which also ends the service's
    // connections); the service thread ends with the process.
    let outcome = tokio::select! {
        outcome = serve_and_measure(&args, &database, cores) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let removed = database.remove().await;
    let rows = outcome?;
    println!("{}", header(&args, &database_label(args.database), cores));
    println!("{}", report::render(&rows));
    removed
}

async fn serve_and_measure(
    args: &Args,
    database: &Database,
    cores: usize,
) -> anyhow::Result<Vec<Row>> {
    let server = Server::start(ServerSettings {
        kind: args.database,
        database_url: database.url(),
        redis_url: &args.redis_url,
        cores,
    })
    .await?;
    eprintln!("auth-bench: auth-service listening on {}", server.addr);
    let measured = measure(args, &server, cores).await;
    let stopped = server.stop().await.context("stopping auth-service");
    let rows = measured?;
    stopped?;
    Ok(rows)
}

async fn measure(args: &Args, server: &Server, cores: usize) -> anyhow::Result<Vec<Row>> {
    let plan = args.plan();
    let concurrency = args.concurrency.max(1);
    let mut fixture = Fixture::connect(server.addr, args.channels, server.client.clone()).await?;
    let users = args.users.max(concurrency);
    eprintln!("auth-bench: registering {users} users");
    fixture.prepare(users).await?;

    let mut rows = Vec::new();
    match (args.runs(Phase::Health), args.runs(Phase::Validate)) {
        (true, true) => {
            progress("health check (baseline) and ValidateToken, alternating");
            let mut health = fixture.health(concurrency);
            let mut validate = fixture.validate(concurrency)?;
            let (health, validate) = plan.against(&mut *health, &mut *validate).await;
            rows.push(Row::baseline("Health/Check", health.clone()));
            rows.push(validate_row(validate, Some(&health)));
        }
        (true, false) => {
            progress("health check");
            let health = plan.alone(&mut *fixture.health(concurrency)).await;
            rows.push(Row::baseline("Health/Check", health));
        }
        (false, true) => {
            progress("ValidateToken");
            let validate = plan.alone(&mut *fixture.validate(concurrency)?).await;
            rows.push(validate_row(validate, None));
        }
        (false, false) => {}
    }
    if args.runs(Phase::Refresh) {
        progress("Refresh");
        let refresh = plan.alone(&mut *fixture.refresh(concurrency)?).await;
        rows.push(Row::per_core(
            "Refresh",
            refresh,
            cores,
            REFRESH_MIN_PER_CORE,
        ));
    }
    if args.runs(Phase::ServiceToken) {
        progress("IssueServiceToken");
        let issued = plan.alone(&mut *fixture.service_tokens(concurrency)).await;
        rows.push(Row::per_core(
            "IssueServiceToken",
            issued,
            cores,
            SERVICE_TOKEN_MIN_PER_CORE,
        ));
    }
    if args.runs(Phase::Login) {
        progress(&format!(
            "raw argon2id on {cores} threads (baseline) and Login, alternating"
        ));
        let mut raw = RawArgon::new(cores, args.raw_argon_memory)?;
        let mut login = fixture.login(args.login_concurrency.max(1))?;
        let (raw, login) = plan.against(&mut raw, &mut *login).await;
        let raw_label = match args.raw_argon_memory {
            RawMemory::Fresh => "raw argon2id verify",
            RawMemory::Reused => "raw argon2id verify (memory reused)",
        };
        rows.push(Row::baseline(raw_label, raw.clone()));
        rows.push(Row::ratio(
            "Login",
            login,
            Some(("raw argon2id", &raw)),
            LOGIN_MIN_RATIO,
            None,
        ));
    }
    Ok(rows)
}

fn validate_row(validate: Measurement, health: Option<&Measurement>) -> Row {
    Row::ratio(
        "ValidateToken",
        validate,
        health.map(|health| ("health", health)),
        VALIDATE_MIN_RATIO,
        Some(VALIDATE_MAX_P99),
    )
}

fn progress(phase: &str) {
    eprintln!("auth-bench: measuring {phase}");
}

fn database_label(kind: DatabaseKind) -> String {
    match kind {
        DatabaseKind::Postgres => "PostgreSQL + Redis".into(),
        DatabaseKind::Sqlite => "SQLite, in-process engine".into(),
    }
}

/// The conditions of the run, printed above the table so a pasted table keeps its context.
fn header(args: &Args, store: &str, cores: usize) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "auth-service in-process on loopback; store: {store}; {cores} cores ({cpu}); \
         per phase {} s measured in {} slices (each after {} ms settling; a phase and its \
         baseline alternate slice by slice) after {} s warm-up; {} callers over {} HTTP/2 connections \
         (Login: {} callers; raw argon2id: {cores} threads); callers on {} runtime threads, \
         auth-service on {cores}.\n",
        args.measure().as_secs(),
        args.rounds(),
        SETTLE.as_millis(),
        args.warmup().as_secs(),
        args.concurrency.max(1),
        args.channels.max(1),
        args.login_concurrency.max(1),
        args.client_threads(),
    )
}
