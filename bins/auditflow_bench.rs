//! `auditflow-bench`: measure every stage alone and the whole fleet against the limits of this
//! machine (Kafka's producer/consumer tools, PostgreSQL COPY). Prints one JSON document on
//! stdout and a table on stderr. Run it through `scripts/bench`, which builds and starts the
//! stack first. Never part of the tests.

use std::process::ExitCode;

use clap::Parser;

use auditflow::bench::{install_signal_handlers, report::render_table, run, BenchOptions};

#[derive(Parser)]
#[command(name = "auditflow-bench", version, about = "Benchmark auditflow's stages and fleet against this machine's limits")]
struct Args {
    #[command(flatten)]
    options: BenchOptions,
    /// Also write the JSON document to this file.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    auditflow::telemetry::init_logging(&auditflow::config::LogConfig {
        format: "text".into(),
        // sqlx flags DROP DATABASE as a slow statement: noise here.
        filter: std::env::var("AUDITFLOW_LOG").unwrap_or_else(|_| "warn,sqlx::query=error".into()),
    });
    install_signal_handlers();
    let report = match run(&args.options).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let json = match serde_json::to_string_pretty(&report) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("bench: cannot render the report: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("{}", render_table(&report));
    println!("{json}");
    if let Some(path) = &args.json_out {
        if let Err(e) = std::fs::write(path, format!("{json}\n")) {
            eprintln!("bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
