//! `auditflow`: the operator command.

use std::io::{BufReader, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgAction, Parser, Subcommand};

use auditflow::cli::emit::{self, InputError};
use auditflow::cli::report::{self, ReportFormat};
use auditflow::cli::retention::{format_holds, format_outcome, subject_pseudonym, SubjectArg};
use auditflow::cli::topics::{create_topics, TopicOutcome};
use auditflow::compliance::{Framework, FrameworkSwitches, Mapping, Pseudonyms};
use auditflow::config::Config;
use auditflow::event::RawEvent;
use auditflow::retention::holds::{self, NewHold};

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
    /// Print fresh keys (master, pseudonym, ledger signing) as environment lines.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Verify the hash chains of audit_events against the signed checkpoints, in the database
    /// and outside it (audit-checkpoints, exported checkpoint files).
    Verify(auditflow::cli::ledger::VerifyArgs),
    /// Write a proof: that an event is in the ledger (inclusion), or that a chain's later
    /// signed tree extends an earlier one (--consistency CHAIN FROM_SIZE TO_SIZE).
    Prove(auditflow::cli::proof::ProveArgs),
    /// Check a proof offline (no database, no Kafka) with the ledger's public key(s).
    VerifyProof(auditflow::cli::proof::VerifyProofArgs),
    /// Follow audit-checkpoints, check each checkpoint's consistency with the last one
    /// accepted, co-sign it into the witness's own store, alert on a rewritten history.
    Witness(auditflow::cli::witness::WitnessArgs),
    /// Search the events in OpenSearch: filters, free text, a histogram over time, the total.
    Search(Box<auditflow::cli::search::SearchArgs>),
    /// API tokens: `token issue` mints an HS256 token for local use and tests.
    Token {
        #[command(subcommand)]
        command: auditflow::cli::token::TokenCommand,
    },
    /// The search store: re-index a time range from PostgreSQL.
    Index {
        #[command(subcommand)]
        command: auditflow::cli::index::IndexCommand,
    },
    /// GDPR erasure: destroy a subject's data keys (crypto-shredding) and record a signed receipt.
    Erase {
        /// The subject: a user id (or an IP address / session id with --kind).
        #[arg(long)]
        subject: String,
        /// Why (recorded in the signed receipt).
        #[arg(long)]
        reason: String,
        #[arg(long, default_value = "user")]
        kind: auditflow::privacy::SubjectKind,
    },
    /// Data-subject access request: every event about a subject, decrypted, as JSON.
    Export {
        #[arg(long)]
        subject: String,
        #[arg(long, default_value = "user")]
        kind: auditflow::privacy::SubjectKind,
        /// Write to this file instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Inspect dead letters and send chosen ones back to their source topic.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Consumer lag per stage and partition (sink stages: against their stored offsets).
    Lag,
    /// Move a stopped stage's position to a point in time (its offsets, wherever it keeps them).
    Replay {
        /// enrich, persist, rules, alert or compliance.
        #[arg(long)]
        stage: String,
        /// RFC 3339 time; the stage restarts at the first message at or after it.
        #[arg(long)]
        from: chrono::DateTime<chrono::Utc>,
    },
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
    /// Compliance report of one framework over a period (HTML, CSV or JSON).
    Report(ReportArgs),
    /// Enforce data retention: drop whole expired, unheld month partitions.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Legal holds: data under an active hold is never removed by retention.
    Hold {
        #[command(subcommand)]
        command: HoldCommand,
    },
    /// Check detection rule files, or try them on events without Kafka or Redis.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(clap::Args)]
struct ReportArgs {
    /// sox, gdpr, hipaa or pci.
    #[arg(long, value_parser = parse_framework)]
    framework: Framework,
    /// Start of the period, inclusive (YYYY-MM-DD or RFC 3339, UTC). Default: 30 days before --to.
    #[arg(long, value_parser = report::parse_time)]
    from: Option<chrono::DateTime<chrono::Utc>>,
    /// End of the period, exclusive. Default: now.
    #[arg(long, value_parser = report::parse_time)]
    to: Option<chrono::DateTime<chrono::Utc>>,
    /// html, csv or json.
    #[arg(long, default_value = "html", value_parser = parse_format)]
    format: ReportFormat,
    /// Write the report to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// Drop every month whose rows are all past retention and not under legal hold.
    Run {
        /// Show what would be dropped; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum HoldCommand {
    /// Place a hold on a subject, a time range, or a subject within a time range.
    Add {
        /// The subject's user id (or IP address); only its keyed pseudonym is stored.
        #[arg(long, conflicts_with = "subject_pseudonym")]
        subject: Option<String>,
        /// How to read --subject.
        #[arg(long, value_enum, default_value_t = SubjectArg::Auto)]
        subject_kind: SubjectArg,
        /// The subject's pseudonym as reports show it, instead of --subject.
        #[arg(long)]
        subject_pseudonym: Option<String>,
        /// Start of the held range, inclusive (YYYY-MM-DD or RFC 3339).
        #[arg(long, value_parser = report::parse_time)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// End of the held range, exclusive.
        #[arg(long, value_parser = report::parse_time)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Why (case, ticket, authority).
        #[arg(long)]
        reason: String,
        /// Who places the hold (default: $USER).
        #[arg(long)]
        created_by: Option<String>,
    },
    /// List active holds (--all: released ones too).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Release an active hold; its record stays.
    Release {
        id: i64,
        /// Who releases it (default: $USER).
        #[arg(long)]
        released_by: Option<String>,
    },
}

fn parse_framework(s: &str) -> Result<Framework, String> {
    s.parse()
}

fn parse_format(s: &str) -> Result<ReportFormat, String> {
    s.parse()
}

fn operator(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters with their reasons.
    List {
        #[arg(long)]
        stage: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead letter (PARTITION:OFFSET): headers and payload.
    Show { position: String },
    /// Send dead letters back to their stage's input topic (each at most once).
    Replay {
        /// Only these (PARTITION:OFFSET, repeatable).
        #[arg(long = "id")]
        ids: Vec<String>,
        #[arg(long)]
        stage: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        /// Send to this topic instead of the stage's input topic; must be one of the stages'
        /// input topics. Needed when a dead letter's dlq.source.topic is not its stage's input.
        #[arg(long, value_name = "TOPIC")]
        to: Option<String>,
        /// Say what would be sent, send nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Generate AUDITFLOW_MASTER_KEY, AUDITFLOW_PSEUDONYM_KEY and AUDITFLOW_SIGNING_KEY.
    Generate,
    /// Print the ledger's public key (AUDITFLOW_VERIFY_KEY) for the configured signing key.
    Public,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Compile every rule file of DIR (or one file) as audit-rules would, native or Sigma;
    /// report each problem with file, line, rule and reason.
    Validate {
        /// Directory of rule files (*.yaml, *.yml), or one file.
        dir: PathBuf,
    },
    /// Print the native rules that Sigma files compile to (give every file a correlation's
    /// rules are in, or their directory).
    Convert {
        /// Sigma files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
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
    /// W3C trace context of the caller (`00-<trace id>-<span id>-<flags>`): the events join
    /// that trace instead of starting their own.
    #[arg(long, value_parser = parse_traceparent)]
    traceparent: Option<auditflow::trace::TraceParent>,
}

fn parse_traceparent(s: &str) -> Result<auditflow::trace::TraceParent, String> {
    s.parse().map_err(|e: auditflow::trace::context::InvalidTraceParent| e.to_string())
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
    // Commands that write events start (or continue) their traces.
    if matches!(cli.command, Command::Emit(_) | Command::Demo { .. }) {
        if let Err(e) = auditflow::trace::init(&config.trace, "auditflow", "emit", &config.instance_id(), &prometheus::Registry::new()) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
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
    auditflow::trace::shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<InputError>().is_some() => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) if e.downcast_ref::<auditflow::cli::ledger::LedgerBroken>().is_some() => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, mut config: Config) -> anyhow::Result<()> {
    // Operator commands (migrate, verify, retention, reports) may rightly run long statements,
    // and an operator is there to interrupt them: the stages' statement timeout is not for them.
    config.database.statement_timeout_ms = 0;
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
                    emit::send(&config, &topic, &events, progress && rate == 0, None)?;
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
        Command::Keys { command: KeysCommand::Generate } => {
            use auditflow::privacy::SecretKey;
            let signing = SecretKey::generate();
            let public = auditflow::ledger::LedgerSigner::new(&signing).verifying_key();
            println!("AUDITFLOW_MASTER_KEY={}", SecretKey::generate().to_base64());
            println!("AUDITFLOW_PSEUDONYM_KEY={}", SecretKey::generate().to_base64());
            println!("AUDITFLOW_SIGNING_KEY={}", signing.to_base64());
            println!("AUDITFLOW_VERIFY_KEY={}", SecretKey(public.to_bytes()).to_base64());
            Ok(())
        }
        Command::Keys { command: KeysCommand::Public } => {
            let public = auditflow::cli::ledger::signer(&config)?.verifying_key();
            println!("AUDITFLOW_VERIFY_KEY={}", auditflow::privacy::SecretKey(public.to_bytes()).to_base64());
            Ok(())
        }
        Command::Verify(args) => auditflow::cli::ledger::run_verify(&config, args).await,
        Command::Prove(args) => auditflow::cli::proof::run_prove(&config, args).await,
        Command::VerifyProof(args) => auditflow::cli::proof::run_verify_proof(&config, args),
        Command::Witness(args) => auditflow::cli::witness::run(&config, args).await,
        Command::Search(args) => auditflow::cli::search::run(&config, *args).await,
        Command::Index { command } => auditflow::cli::index::run(&config, command).await,
        Command::Token { command } => auditflow::cli::token::run(&config, command),
        Command::Erase { subject, reason, kind } => {
            let keys = config.privacy.keys()?;
            let signer = signer(&config)?;
            let pool = auditflow::db::connect(&config.database, 3).await.context("connecting to PostgreSQL")?;
            match auditflow::cli::privacy::erase(&pool, &keys, &signer, kind, &subject, &reason).await {
                Ok(r) => {
                    println!("erased: {} data key(s) destroyed, {} stored event(s) now unreadable", r.keys_destroyed, r.events_affected);
                    println!("receipt {} signed by {}: {}", r.id, signer.key_id, r.statement);
                    // The search store holds the subject only by pseudonym; those go too.
                    if config.index.url.is_some() {
                        let client = auditflow::index::client::SearchClient::new(&config.index)?;
                        let n = client
                            .redact_subject(&config.index.prefix, &keys.pseudonym(kind, &subject))
                            .await
                            .context("redacting the subject's documents in OpenSearch (the keys are already destroyed; run erase again)")?;
                        println!("search store: {n} document(s) redacted");
                    }
                    Ok(())
                }
                Err(auditflow::cli::privacy::EraseError::LegalHold(reason)) => {
                    Err(InputError(format!("refused: the subject is under legal hold ({reason}); release the hold first")).into())
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Export { subject, kind, output } => {
            let keys = config.privacy.keys()?;
            let pool = auditflow::db::connect(&config.database, 3).await.context("connecting to PostgreSQL")?;
            let events = auditflow::cli::privacy::export(&pool, &keys, kind, &subject).await?;
            let text = serde_json::to_string_pretty(&events)?;
            match output {
                Some(path) => std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?,
                None => println!("{text}"),
            }
            eprintln!("{} event(s) about the subject", events.len());
            Ok(())
        }
        Command::Dlq { command } => run_dlq(command, &config).await,
        Command::Lag => {
            let pool = auditflow::db::connect(&config.database, 1).await.ok();
            let rows = auditflow::cli::ops::lag(&config, pool.as_ref()).await?;
            println!("{:<11} {:<28} {:>9} {:>12} {:>12} {:>10}", "STAGE", "TOPIC", "PARTITION", "POSITION", "END", "LAG");
            for r in rows {
                let pos = r.committed.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
                println!("{:<11} {:<28} {:>9} {:>12} {:>12} {:>10}", r.stage, r.topic, r.partition, pos, r.end, r.lag);
            }
            Ok(())
        }
        Command::Replay { stage, from } => {
            let pool = auditflow::db::connect(&config.database, 3).await.context("connecting to PostgreSQL")?;
            let moved = auditflow::cli::ops::rewind_stage(&config, &pool, &stage, from)
                .await
                .map_err(|e| InputError(e.to_string()))?;
            for (partition, offset) in moved {
                println!("{stage}: partition {partition} restarts at offset {offset}");
            }
            Ok(())
        }
        Command::Report(args) => run_report(args, config).await,
        Command::Retention { command: RetentionCommand::Run { dry_run, json } } => {
            let pool = auditflow::db::connect(&config.database, 5).await.context("connecting to PostgreSQL")?;
            let outcome = auditflow::retention::run(&pool, &config.retention, chrono::Utc::now(), dry_run)
                .await
                .context("enforcing retention")?;
            // The search store follows: the indices of months the ledger dropped.
            let indices = match &config.index.url {
                Some(_) => {
                    let client = auditflow::index::client::SearchClient::new(&config.index)?;
                    auditflow::index::retention::drop_expired(&pool, &client, &config.index.prefix, dry_run)
                        .await
                        .context("enforcing retention on the search store")?
                }
                None => Vec::new(),
            };
            if json {
                let mut v = serde_json::to_value(&outcome)?;
                v["indices"] = serde_json::to_value(&indices)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", format_outcome(&outcome));
                for i in &indices {
                    let verb = if i.dropped { "dropped" } else { "would drop" };
                    println!("search store: {verb} index {} ({} document(s))", i.index, i.documents);
                }
            }
            Ok(())
        }
        Command::Hold { command } => run_hold(command, config).await,
        Command::Rules { command: RulesCommand::Validate { dir } } => {
            let mut stdout = std::io::stdout().lock();
            auditflow::cli::rules::validate(&dir, &mut stdout)
                .map_err(|e| InputError(format!("{} problem(s) in the rules of {}:\n{e}", e.0.len(), dir.display())))?;
            Ok(())
        }
        Command::Rules { command: RulesCommand::Convert { paths } } => {
            let mut stdout = std::io::stdout().lock();
            auditflow::cli::rules::convert(&paths, &mut stdout)
                .map_err(|e| InputError(format!("{} problem(s) in the rules:\n{e}", e.0.len())))?;
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

async fn run_report(args: ReportArgs, config: Config) -> anyhow::Result<()> {
    let to = args.to.unwrap_or_else(chrono::Utc::now);
    let from = args.from.unwrap_or(to - chrono::Duration::days(30));
    if from >= to {
        return Err(InputError(format!("--from ({from}) must be before --to ({to})")).into());
    }
    // Every control of the mapping is listed, whether its framework is switched on now or not:
    // the report covers what was recorded.
    let mapping = Mapping::load(config.compliance.mapping.as_deref(), FrameworkSwitches::ALL_ON)?;
    let pool = auditflow::db::connect(&config.database, 5).await.context("connecting to PostgreSQL")?;
    let data = report::gather(&pool, args.framework, from, to, Some(&mapping)).await.context("querying compliance_events")?;
    let text = report::render(&data, args.format);
    match &args.output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

async fn run_hold(command: HoldCommand, config: Config) -> anyhow::Result<()> {
    let pool = auditflow::db::connect(&config.database, 5).await.context("connecting to PostgreSQL")?;
    match command {
        HoldCommand::Add { subject, subject_kind, subject_pseudonym: given, from, to, reason, created_by } => {
            let pseudonym = match (subject, given) {
                (Some(s), _) => {
                    let pseudonyms = Pseudonyms::from_env()?;
                    Some(subject_pseudonym(&pseudonyms, &s, subject_kind).map_err(InputError)?)
                }
                (None, Some(p)) if !p.trim().is_empty() => Some(p.trim().to_string()),
                _ => None,
            };
            let hold = NewHold { subject_pseudonym: pseudonym, from_ts: from, to_ts: to, reason, created_by: operator(created_by) };
            hold.validate().map_err(InputError)?;
            let placed = holds::add(&pool, &hold).await.context("placing the hold")?;
            println!("placed legal hold {}", placed.id);
            print!("{}", format_holds(&[placed]));
        }
        HoldCommand::List { all } => print!("{}", format_holds(&holds::list(&pool, all).await?)),
        HoldCommand::Release { id, released_by } => match holds::release(&pool, id, &operator(released_by)).await? {
            Some(h) => {
                println!("released legal hold {}", h.id);
                print!("{}", format_holds(&[h]));
            }
            None => return Err(InputError(format!("no active legal hold with id {id}")).into()),
        },
    }
    Ok(())
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
        let parent = args.traceparent;
        move || emit::send(&config, &topic, &events, progress, parent)
    })
    .await??;
    if bulk {
        println!("sent {} events to {topic}", to_send.len());
    } else if let Some(id) = to_send.first().and_then(|e| e.id.as_deref()) {
        println!("{id}");
    }
    Ok(())
}

async fn run_dlq(command: DlqCommand, config: &Config) -> anyhow::Result<()> {
    use auditflow::runtime::dlq;
    let cfg = config.clone();
    let letters = tokio::task::spawn_blocking(move || auditflow::cli::ops::read_all(&cfg, &cfg.topics.dlq.name)).await??;
    match command {
        DlqCommand::List { stage, kind, limit } => {
            let chosen = auditflow::cli::ops::select(&letters, stage.as_deref(), kind.as_deref(), &[]);
            println!("{:<12} {:<10} {:<20} {:<36} MESSAGE", "POSITION", "STAGE", "KIND", "SOURCE");
            // Header values are whatever the DLQ's writer put there: escaped for the terminal.
            let h = |d: &auditflow::cli::ops::DeadLetter, name: &str| {
                auditflow::cli::ops::printable(d.header(name).unwrap_or("?").as_bytes(), false)
            };
            for d in chosen.iter().take(limit) {
                let source =
                    format!("{}/{}:{}", h(d, dlq::H_SOURCE_TOPIC), h(d, dlq::H_SOURCE_PARTITION), h(d, dlq::H_SOURCE_OFFSET));
                let message: String = d.header(dlq::H_ERROR_MESSAGE).unwrap_or("").chars().take(80).collect();
                println!(
                    "{:<12} {:<10} {:<20} {:<36} {}",
                    d.position(),
                    h(d, dlq::H_STAGE),
                    h(d, dlq::H_ERROR_KIND),
                    source,
                    auditflow::cli::ops::printable(message.as_bytes(), false)
                );
            }
            println!("{} of {} dead letter(s) shown", chosen.len().min(limit), chosen.len());
            Ok(())
        }
        DlqCommand::Show { position } => {
            let d = letters
                .iter()
                .find(|d| d.position() == position)
                .ok_or_else(|| InputError(format!("no dead letter at {position} (expected PARTITION:OFFSET)")))?;
            // Everything here was written by whoever could produce to the DLQ: escaped.
            use auditflow::cli::ops::printable;
            if let Some(key) = &d.key {
                println!("key: {}", printable(key, false));
            }
            for (k, v) in &d.headers {
                println!("{}: {}", printable(k.as_bytes(), false), printable(v, false));
            }
            println!();
            println!("{}", printable(&d.payload, true));
            Ok(())
        }
        DlqCommand::Replay { ids, stage, kind, to, dry_run } => {
            let chosen = auditflow::cli::ops::select(&letters, stage.as_deref(), kind.as_deref(), &ids);
            if chosen.is_empty() {
                return Err(InputError("no dead letter matches; see `auditflow dlq list`".into()).into());
            }
            let pool = auditflow::db::connect(&config.database, 3).await.context("connecting to PostgreSQL")?;
            let o = auditflow::cli::ops::replay(config, &pool, &chosen, to.as_deref(), dry_run, |d, why| {
                eprintln!("refused {}: {}", d.position(), auditflow::cli::ops::printable(why.to_string().as_bytes(), false));
            })
            .await?;
            println!(
                "{} {} replayed, {} already replayed before, {} not replayable (truncated), {} refused (see above)",
                o.replayed,
                if dry_run { "would be" } else { "" },
                o.already_replayed,
                o.not_replayable,
                o.refused
            );
            Ok(())
        }
    }
}

fn signer(config: &Config) -> anyhow::Result<auditflow::ledger::LedgerSigner> {
    let seed = config.ledger.signing_key.as_deref().ok_or_else(|| {
        auditflow::error::ConfigError::new("AUDITFLOW_SIGNING_KEY", "required (generate with `auditflow keys generate`)")
    })?;
    Ok(auditflow::ledger::LedgerSigner::new(&auditflow::privacy::SecretKey::parse("AUDITFLOW_SIGNING_KEY", seed)?))
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
