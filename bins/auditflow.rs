//! `auditflow`: the operator command.

use std::io::{BufReader, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgAction, Parser, Subcommand};

use auditflow::cli::emit::{self, InputError};
use auditflow::cli::topics::{create_topics, TopicOutcome};
use auditflow::config::Config;
use auditflow::event::RawEvent;

#[derive(Parser)]
#[command(name = "auditflow", version, about = "Operate the auditflow audit-logging pipeline")]
struct Cli {
    /// TOML configuration file (else AUDITFLOW_CONFIG; AUDITFLOW_* variables override it).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write raw audit events to audit-raw: one from flags, or many from --file (JSONL, `-` = stdin).
    Emit(Box<EmitArgs>),
    /// Manage the pipeline's Kafka topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Apply the database migrations.
    Migrate,
    /// Demo producer: send a realistic mix of events (logins, failures, admin actions, exports).
    Demo {
        /// How many events to send.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Events per second (0 = as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Seed of the event mix, for reproducible runs.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Check detection rule files, or try them on events without Kafka or Redis.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Compile every rule file of DIR as audit-rules would; report each problem with file and line.
    Validate {
        /// Directory of rule files (*.yaml, *.yml).
        dir: PathBuf,
    },
    /// Run the rules of DIR over a JSON-lines file of raw or enriched events, with an in-memory
    /// window store; print which rules fire per event and the window state.
    Test {
        /// Directory of rule files (*.yaml, *.yml).
        dir: PathBuf,
        /// JSON-lines file of events (`-` reads stdin).
        #[arg(long)]
        events: PathBuf,
        /// Print the matches as JSON lines (RuleMatch records) instead of the report.
        #[arg(long)]
        json: bool,
        /// Check absence rules at this time (RFC 3339) after the last event.
        #[arg(long)]
        until: Option<chrono::DateTime<chrono::Utc>>,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create every pipeline topic that does not exist yet.
    Create,
}

#[derive(clap::Args)]
struct EmitArgs {
    /// JSON-lines file of raw events (`-` reads stdin). Excludes the single-event flags.
    #[arg(long, conflicts_with_all = ["action", "resource"])]
    file: Option<PathBuf>,
    /// Action being audited, e.g. login, delete_user.
    #[arg(long, required_unless_present = "file")]
    action: Option<String>,
    /// Resource being accessed.
    #[arg(long, required_unless_present = "file")]
    resource: Option<String>,
    #[arg(long)]
    resource_id: Option<String>,
    #[arg(long)]
    user_id: Option<String>,
    #[arg(long)]
    session_id: Option<String>,
    #[arg(long)]
    ip_address: Option<String>,
    /// PUBLIC, INTERNAL, CONFIDENTIAL or RESTRICTED.
    #[arg(long, default_value = "INTERNAL")]
    classification: String,
    /// LOW, MEDIUM, HIGH or CRITICAL.
    #[arg(long, default_value = "LOW")]
    severity: String,
    /// Whether the action succeeded (`--success` or `--success=false`).
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    success: bool,
    #[arg(long)]
    method: Option<String>,
    #[arg(long)]
    endpoint: Option<String>,
    #[arg(long)]
    status_code: Option<i32>,
    #[arg(long)]
    user_agent: Option<String>,
    #[arg(long)]
    error_message: Option<String>,
    /// Duration in milliseconds.
    #[arg(long)]
    duration: Option<i64>,
    /// Additional metadata, a JSON object.
    #[arg(long)]
    metadata: Option<String>,
    /// Topic to write to (default: the configured raw topic).
    #[arg(long)]
    topic: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    auditflow::telemetry::init_logging(&auditflow::config::LogConfig {
        format: config.log.format.clone(),
        filter: std::env::var("AUDITFLOW_LOG").unwrap_or_else(|_| "warn".into()),
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command, config));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<InputError>().is_some() => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Emit(args) => run_emit(*args, config).await,
        Command::Topics { command: TopicsCommand::Create } => {
            for (name, outcome) in create_topics(&config, &config.topics.all()).await? {
                match outcome {
                    TopicOutcome::Created => println!("created {name}"),
                    TopicOutcome::AlreadyExists => println!("exists  {name}"),
                }
            }
            Ok(())
        }
        Command::Demo { count, rate, seed } => {
            let topic = config.topics.raw.name.clone();
            let progress = std::io::stderr().is_terminal();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let mut mix = auditflow::demo::EventMix::new(seed, 2000);
                // Paced in one-second slices so --rate holds without a timer per event.
                let slice = if rate == 0 { count } else { rate };
                let mut sent = 0;
                while sent < count {
                    let started = std::time::Instant::now();
                    let n = slice.min(count - sent);
                    let events: Vec<RawEvent> = (0..n).map(|_| mix.next_event()).collect();
                    emit::send(&config, &topic, &events, progress && rate == 0)?;
                    sent += n;
                    if rate > 0 {
                        if let Some(left) = std::time::Duration::from_secs(1).checked_sub(started.elapsed()) {
                            std::thread::sleep(left);
                        }
                    }
                }
                println!("sent {sent} demo events to {topic}");
                Ok(())
            })
            .await?
        }
        Command::Rules { command: RulesCommand::Validate { dir } } => {
            let mut stdout = std::io::stdout().lock();
            auditflow::cli::rules::validate(&dir, &mut stdout)
                .map_err(|e| InputError(format!("{} problem(s) in the rules of {}:\n{e}", e.0.len(), dir.display())))?;
            Ok(())
        }
        Command::Rules { command: RulesCommand::Test { dir, events, json, until } } => {
            let opts = auditflow::cli::rules::TestOptions { rules_dir: dir, events, json, until };
            let mut stdout = std::io::stdout().lock();
            auditflow::cli::rules::run_test(&opts, &config.enrich.to_enrich_config(), &mut stdout)?;
            Ok(())
        }
        Command::Migrate => {
            let pool = auditflow::db::connect(&config.database, 20).await.context("connecting to PostgreSQL")?;
            auditflow::db::MIGRATOR.run(&pool).await.context("applying migrations")?;
            println!("database schema is up to date");
            Ok(())
        }
    }
}

async fn run_emit(args: EmitArgs, config: Config) -> anyhow::Result<()> {
    let enrich = config.enrich.to_enrich_config();
    let topic = args.topic.clone().unwrap_or_else(|| config.topics.raw.name.clone());
    let (events, bulk) = match &args.file {
        Some(path) if path.as_os_str() == "-" => {
            (emit::read_jsonl(std::io::stdin().lock(), &enrich)?, true)
        }
        Some(path) => {
            let f = std::fs::File::open(path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
            (emit::read_jsonl(BufReader::new(f), &enrich)?, true)
        }
        None => (vec![single_event(&args, &enrich)?], false),
    };
    let progress = bulk && std::io::stderr().is_terminal();
    let to_send = events;
    tokio::task::spawn_blocking({
        let config = config.clone();
        let topic = topic.clone();
        let events = to_send.clone();
        move || emit::send(&config, &topic, &events, progress)
    })
    .await??;
    if bulk {
        println!("sent {} events to {topic}", to_send.len());
    } else if let Some(id) = to_send.first().and_then(|e| e.id.as_deref()) {
        println!("{id}");
    }
    Ok(())
}

fn single_event(args: &EmitArgs, enrich: &auditflow::enrich::EnrichConfig) -> Result<RawEvent, InputError> {
    let metadata = match &args.metadata {
        Some(text) => Some(
            serde_json::from_str::<serde_json::Value>(text)
                .map_err(|e| InputError(format!("--metadata is not valid JSON: {e}")))?,
        ),
        None => None,
    };
    let raw = RawEvent {
        action: args.action.clone(),
        resource: args.resource.clone(),
        resource_id: args.resource_id.clone(),
        user_id: args.user_id.clone(),
        session_id: args.session_id.clone(),
        ip_address: args.ip_address.clone(),
        classification: Some(args.classification.clone()),
        severity: Some(args.severity.clone()),
        success: Some(args.success),
        method: args.method.clone(),
        endpoint: args.endpoint.clone(),
        status_code: args.status_code,
        user_agent: args.user_agent.clone(),
        error_message: args.error_message.clone(),
        duration: args.duration,
        metadata,
        ..RawEvent::default()
    };
    emit::prepare(raw, enrich)
}
