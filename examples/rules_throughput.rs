//! Throughput of the rules engine: the default rule pack over 200,000 realistic enriched events
//! (the demo mix: logins with ~5 % failures, admin actions, exports), in batches of 5,000 as the
//! stage reads them. Two data sets: this example's original one (`EventMix` seed 7, 2,000 users,
//! every event at the same instant) and the one `scripts/bench` sends (seed 42, 5,000 users,
//! event times advancing as at 100,000 events/s). Measured with the in-memory window store (the
//! CPU cost of matching and window logic on one core) and, if Redis answers on
//! `AUDITFLOW_REDIS_URL` (default 127.0.0.1:6379), with the Redis store, under a throw-away key
//! prefix that is deleted afterwards.
//!
//! `cargo run --release --example rules_throughput`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use auditflow::enrich::{EnrichConfig, Enricher};
use auditflow::event::{EnrichedEvent, SourcePosition};
use auditflow::rules::{MemoryStore, RedisWindowStore, RulesEngine, WindowStore};
use chrono::Utc;

const EVENTS: usize = 200_000;
const BATCH: usize = 5_000;

fn run<S: WindowStore>(engine: &RulesEngine, events: &[EnrichedEvent], store: &mut S) -> (Duration, usize) {
    let start = Instant::now();
    let mut matches = 0;
    for batch in events.chunks(BATCH) {
        let results = engine.evaluate(batch, store, false).expect("evaluate");
        matches += results.iter().map(|r| r.matches.len()).sum::<usize>();
    }
    (start.elapsed(), matches)
}

/// `spread`: give events Kafka timestamps 10 µs apart instead of one shared instant.
fn events(seed: u64, users: u64, spread: bool) -> Vec<EnrichedEvent> {
    let enricher = Enricher::new(&EnrichConfig::default()).expect("enricher");
    let mut mix = auditflow::demo::EventMix::new(seed, users);
    let now = Utc::now();
    let start_ms = now.timestamp_millis() - (EVENTS as i64) / 100;
    (0..EVENTS)
        .map(|i| {
            let raw = serde_json::to_vec(&mix.next_event()).expect("json");
            let timestamp_ms = spread.then_some(start_ms + i as i64 / 100);
            let src = SourcePosition { topic: "bench".into(), partition: 0, offset: i as i64, timestamp_ms };
            enricher.enrich(&raw, &src, now).expect("valid demo event")
        })
        .collect()
}

fn report(store: &str, took: Duration, matches: usize) {
    println!(
        "  {store:<6} store: {EVENTS} events in {:.2} s = {:.0} events/s, {matches} matches",
        took.as_secs_f64(),
        EVENTS as f64 / took.as_secs_f64()
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
    let engine = RulesEngine::load_dir(&rules)?;
    let url = std::env::var("AUDITFLOW_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let rt = tokio::runtime::Runtime::new()?;
    let sets = [
        ("example mix (seed 7, 2,000 users, one instant)", events(7, 2_000, false)),
        ("bench mix (seed 42, 5,000 users, 100k events/s of event time)", events(42, 5_000, true)),
    ];
    for (name, events) in &sets {
        println!("{name}:");
        let (took, matches) = run(&engine, events, &mut MemoryStore::new());
        report("memory", took, matches);

        let prefix = format!("bench:{}:", uuid::Uuid::new_v4().simple());
        match rt.block_on(RedisWindowStore::connect(&url, &prefix, Duration::from_secs(5))) {
            Ok(mut store) => {
                let (took, redis_matches) = run(&engine, events, &mut store);
                report("redis", took, redis_matches);
                // clean up the throw-away keys
                let mut c = redis::Client::open(url.as_str())?.get_connection()?;
                let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query(&mut c)?;
                for chunk in keys.chunks(500) {
                    redis::cmd("DEL").arg(chunk).query::<()>(&mut c)?;
                }
            }
            Err(e) => println!("  redis  store: skipped ({e})"),
        }
    }
    Ok(())
}
