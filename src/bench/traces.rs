//! What tracing costs: the whole fleet at saturation with tracing off, with 1% of new traces
//! recorded and with every trace recorded, on the same events, in alternating rounds (so drift
//! of the machine hits every mode), spans exported to the stack's Jaeger.

use std::sync::Arc;

use serde::Serialize;

use super::data::Prepared;
use super::env::BenchEnv;
use super::fleet::run_fleet;
use super::packs::median;
use super::produce::Offered;
use super::stages::{RunArgs, StageSpec};

/// The modes compared: name and sample ratio (`None`: tracing off).
pub const MODES: [(&str, Option<&str>); 3] = [("off", None), ("1%", Some("0.01")), ("100%", Some("1"))];

#[derive(Debug, Clone, Serialize)]
pub struct TracingCost {
    pub events: u64,
    pub endpoint: String,
    /// Steady rows per second of each round, per mode (in [`MODES`] order).
    pub events_per_sec: Vec<(String, Vec<f64>)>,
    /// `1 − median(mode) / median(off)`, per traced mode.
    pub cost: Vec<(String, f64)>,
    /// Events lost over every run (must be 0).
    pub lost: i64,
}

impl TracingCost {
    pub fn cost_of(&self, mode: &str) -> Option<f64> {
        self.cost.iter().find(|(m, _)| m == mode).map(|(_, c)| *c)
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn compare(
    env: &mut BenchEnv,
    args: &RunArgs<'_>,
    fleet: &[StageSpec],
    events: &Arc<Vec<Prepared>>,
    n: u64,
    rounds: usize,
    endpoint: &str,
    immediate_policies: &[String],
) -> anyhow::Result<TracingCost> {
    let mut rates: Vec<(String, Vec<f64>)> = MODES.iter().map(|(m, _)| (m.to_string(), Vec::new())).collect();
    let mut lost = 0;
    for round in 0..rounds {
        for (i, (mode, ratio)) in MODES.iter().enumerate() {
            super::proc::check_abort()?;
            let mut extra = args.extra_env.to_vec();
            match ratio {
                Some(r) => {
                    extra.push(("AUDITFLOW_OTLP_ENDPOINT".into(), endpoint.to_string()));
                    extra.push(("AUDITFLOW_TRACE_SAMPLE_RATIO".into(), r.to_string()));
                }
                // Set and empty: off, whatever the environment says.
                None => extra.push(("AUDITFLOW_OTLP_ENDPOINT".into(), String::new())),
            }
            let run = RunArgs { extra_env: &extra, ..*args };
            let name = format!("tracing-{}-{round}", mode.trim_end_matches('%'));
            let r = run_fleet(env, &run, fleet, &name, events, Offered::AsFastAsPossible { events: n }, immediate_policies).await?;
            lost += r.lost;
            rates[i].1.push(r.steady_events_per_sec.unwrap_or(r.events_per_sec));
        }
    }
    let off = median(&rates[0].1);
    let cost = rates.iter().skip(1).map(|(m, v)| (m.clone(), 1.0 - median(v) / off)).collect();
    Ok(TracingCost { events: n, endpoint: endpoint.to_string(), events_per_sec: rates, cost, lost })
}
