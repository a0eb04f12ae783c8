//! Throughput of the enrich stage's CPU work on one core: `Enricher::enrich` + `encode_enriched`
//! over 1,000,000 realistic messages (80 % JSON, 20 % Avro; a GeoIP database with a few
//! thousand networks, half the
//! public addresses inside them; default compliance rules; ~1 % invalid input).
//!
//! `cargo run --release --example enrich_throughput`
//! (`GEOIP_DB=/path/GeoLite2-City.mmdb` to use a real database instead of the generated one)

use std::hint::black_box;
use std::time::Instant;

use auditflow::codec::{encode_enriched, encode_raw};
use auditflow::enrich::mmdb_writer::{CityRecord, MmdbWriter};
use auditflow::enrich::{EnrichConfig, Enricher};
use auditflow::event::{RawEvent, RawTimestamp, SourcePosition};
use chrono::Utc;
use serde_json::json;

const EVENTS: usize = 1_000_000;
const DISTINCT: usize = 10_000;

/// Deterministic pseudo-random numbers (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("bench-city.mmdb");
    let mut rng = Rng(0x00c0_ffee);
    let mut writer = MmdbWriter::new();
    let mut networks = Vec::new();
    for i in 0..4_000u64 {
        let a = 1 + (rng.next() % 222) as u8;
        let net = format!("{a}.{}.{}", rng.next() as u8, rng.next() as u8);
        let cidr = format!("{net}.0/24");
        networks.push(net);
        writer.insert(
            &cidr,
            CityRecord {
                country_code: Some(["US", "DE", "GB", "FR", "JP", "BR"][(i % 6) as usize].into()),
                country: Some(format!("Country {}", i % 6)),
                region: Some(format!("Region {}", i % 50)),
                city: Some(format!("City {i}")),
                latitude: Some((i % 180) as f64 - 90.0),
                longitude: Some((i % 360) as f64 - 180.0),
            },
        )?;
    }
    writer.write_to(&db)?;

    // A real City database can be measured instead of the synthetic one.
    let db = std::env::var_os("GEOIP_DB")
        .map(std::path::PathBuf::from)
        .unwrap_or(db);
    println!("GeoIP database: {}", db.display());
    let config = EnrichConfig {
        geoip_db: Some(db),
        ..Default::default()
    };
    let enricher = Enricher::new(&config)?;
    let now = Utc::now();
    let now_ms = now.timestamp_millis();

    let actions = [
        "login",
        "logout",
        "read",
        "update",
        "delete_user",
        "grant_role",
        "export",
        "payment_capture",
    ];
    let resources = [
        "authentication",
        "user_management",
        "customer_data",
        "invoice",
        "orders",
        "cardholder_data",
        "reports",
    ];
    let methods = ["get", "POST", "put", "DELETE"];
    let agents = [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
        "curl/8.5.0",
        "okhttp/4.12.0",
    ];

    let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(DISTINCT);
    for i in 0..DISTINCT {
        let ip = match i % 4 {
            0 => format!(
                "10.{}.{}.{}",
                rng.next() as u8,
                rng.next() as u8,
                rng.next() as u8
            ),
            1 => format!("2001:db8::{:x}", rng.next() as u16),
            2 => format!(
                "{}.{}",
                networks[(rng.next() % networks.len() as u64) as usize],
                rng.next() as u8
            ),
            _ => format!(
                "{}.{}.{}.{}",
                1 + rng.next() % 222,
                rng.next() as u8,
                rng.next() as u8,
                rng.next() as u8
            ),
        };
        let raw = RawEvent {
            id: (i % 3 != 0).then(|| format!("evt-{i:08}")),
            timestamp: Some(if i % 2 == 0 {
                RawTimestamp::EpochMillis(now_ms - (rng.next() % 3_600_000) as i64)
            } else {
                RawTimestamp::Rfc3339("2024-05-31T10:00:00.123Z".into())
            }),
            user_id: Some(format!("user{}", rng.next() % 5000)),
            session_id: (i % 2 == 0).then(|| format!("sess-{:x}", rng.next())),
            action: Some(rng.pick(&actions).into()),
            resource: Some(rng.pick(&resources).into()),
            resource_id: Some(format!("r{}", rng.next() % 100_000)),
            method: Some(rng.pick(&methods).into()),
            endpoint: Some(format!("/api/v1/{}/{}", rng.pick(&resources), rng.next() % 1000)),
            status_code: Some([200, 201, 204, 400, 401, 403, 404, 500][(rng.next() % 8) as usize]),
            user_agent: Some(rng.pick(&agents).into()),
            ip_address: Some(ip),
            classification: Some(rng.pick(&["PUBLIC", "internal", "Confidential", "RESTRICTED"]).into()),
            severity: Some(rng.pick(&["low", "MEDIUM", "high", "CRITICAL"]).into()),
            metadata: (i % 2 == 0).then(|| {
                json!({"export_type": "full", "records_count": rng.next() % 10_000, "file_format": "csv",
                       "client": {"version": "2.3.1", "platform": "web"}})
            }),
            success: Some(!rng.next().is_multiple_of(10)),
            error_message: None,
            duration: Some((rng.next() % 2000) as i64),
        };
        let mut payload = if i % 5 == 0 {
            encode_raw(&raw)
        } else {
            serde_json::to_vec(&raw)?
        };
        if i % 100 == 99 {
            // Some bad input: truncated.
            payload.truncate(payload.len() / 2);
        }
        payloads.push(payload);
    }

    let mut source = SourcePosition {
        topic: "audit-raw".into(),
        partition: 0,
        offset: 0,
        timestamp_ms: Some(now_ms),
    };
    let mut out = Vec::with_capacity(1024);
    let (mut ok, mut rejected, mut located, mut bytes_out) = (0usize, 0usize, 0usize, 0usize);

    // Warm-up so page faults and lazy initialisation are not measured.
    for p in payloads.iter().take(1000) {
        let _ = black_box(enricher.enrich(p, &source, now));
    }

    let start = Instant::now();
    for i in 0..EVENTS {
        source.offset = i as i64;
        match enricher.enrich(&payloads[i % DISTINCT], &source, now) {
            Ok(ev) => {
                ok += 1;
                located += usize::from(ev.location.is_some());
                out.clear();
                encode_enriched(&ev, &mut out);
                bytes_out += black_box(&out).len();
            }
            Err(r) => {
                rejected += 1;
                black_box(r);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{EVENTS} events in {secs:.3} s: {:.0} events/s on one thread \
         ({ok} enriched, {located} geolocated, {rejected} rejected, {:.0} B/event out)",
        EVENTS as f64 / secs,
        bytes_out as f64 / ok.max(1) as f64
    );
    Ok(())
}
