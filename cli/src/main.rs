//! The `dcb-store` command: `demo` runs the course-subscription scenario against the
//! real store and checks its invariants; `bench` measures; `migrate` creates or
//! upgrades a schema; `read`, `tail` and `append` drive the store from a shell.

mod bench;
mod chart;
mod cold;
mod demo;
mod effects;
mod enrolment;
mod follow;
mod prefill;
mod shell;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dcb_store::{Config, EventStore};

#[derive(Parser)]
#[command(name = "dcb-store", version, about = "A DCB event store on PostgreSQL")]
struct Cli {
    /// Configuration file; missing is fine (defaults apply). DATABASE_URL overrides it.
    /// With no database URL at all, the command starts a throwaway PostgreSQL.
    #[arg(long, global = true, default_value = "config.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Many concurrent deciders subscribe students to courses; prints throughput and
    /// latency, then checks the invariants and says PASS or FAIL.
    Demo(demo::DemoArgs),
    /// Measures a workload (append, enrolment, read) in one or more modes.
    Bench(bench::BenchArgs),
    /// Prints the events matching a filter as JSON lines.
    Read(shell::ReadArgs),
    /// Prints the events matching a filter as JSON lines, then new ones as they are
    /// committed (a subscription; with --consumer, a durable one).
    Tail(shell::TailArgs),
    /// Appends JSON lines from standard input (each {"type", "tags", "data", optional
    /// "id", "metadata", "occurred_at", "condition": {"query": [{"types", "tags"}],
    /// "after"}}, or {"events": [...], "condition"}); prints each one's positions.
    Append(shell::AppendArgs),
    /// Creates or migrates the configured schema.
    Migrate {
        /// Grant this role what the store needs (select, insert) and nothing more.
        #[arg(long)]
        app_role: Option<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // Operation spans are at info: keep them off unless asked for (RUST_LOG).
                .unwrap_or_else(|_| "warn,dcb_store::sql::schema=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match actix::System::new().block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // The message and its causes, each once.
            eprintln!("dcb-store: {}", e.report());
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, dcb_store::Error> {
    let config = Config::load_or_default(&cli.config)?;
    // The demo and the benchmarks may run on a throwaway server; `migrate` may not.
    let or_throwaway = |config: Config| {
        if config.database_url().is_some() {
            return config;
        }
        eprintln!(
            "dcb-store: no database URL (DATABASE_URL or database_url in {}): using a throwaway PostgreSQL, deleted at exit",
            cli.config.display()
        );
        config.with_throwaway_server()
    };
    match cli.command {
        Command::Demo(args) => demo::run(or_throwaway(config), args).await,
        Command::Bench(args) => bench::run(or_throwaway(config), args).await,
        // A throwaway server would lose what these read and write: a URL is needed.
        Command::Read(args) => shell::read(config, args).await,
        Command::Tail(args) => shell::tail(config, args).await,
        Command::Append(args) => shell::append(config, args).await,
        Command::Migrate { app_role } => {
            let mut options = dcb_store::MigrateOptions::default();
            if let Some(role) = &app_role {
                options = options.application_role(role);
            }
            let applied = EventStore::migrate_with(&config, options).await?;
            println!(
                "schema {} is at version {} (applied now: {:?})",
                config.schema(),
                dcb_store::SCHEMA_VERSION,
                applied
            );
            if let Some(role) = app_role {
                println!("granted {role}, and nothing more:");
                for (table, privileges) in dcb_store::APPLICATION_GRANTS {
                    println!("  {privileges} on {table}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
