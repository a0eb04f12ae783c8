//! The rules stage on the Sigma pack against the same rules written natively, on the same
//! enriched events, in the same run: `audit-rules` reads the stage phase's `audit-enriched`
//! once per pack and round (alternating, so drift of the machine hits both), each time as a
//! new consumer group with Redis state of its own.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::env::Phase;
use super::stages::{self, RunArgs, StageSpec};

/// The native form of the pack's Sigma rules (see the file's header).
const NATIVE_PACK: &str = include_str!("native-pack.yaml");

/// Throughput of each pack, per round.
#[derive(Debug, Clone, Serialize)]
pub struct PackComparison {
    pub events: u64,
    pub native_events_per_sec: Vec<f64>,
    pub sigma_events_per_sec: Vec<f64>,
    pub native_cpu_seconds_per_million: Vec<f64>,
    pub sigma_cpu_seconds_per_million: Vec<f64>,
    /// Median Sigma throughput over median native throughput.
    pub ratio: f64,
}

/// The median (NaN for none).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The two rule directories: the repository's (Sigma files and the native-only rules) and the
/// same with the Sigma files replaced by their hand-written native form.
fn write_packs(rules: &Path, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (sigma, native) = (dir.join("pack-sigma"), dir.join("pack-native"));
    for d in [&sigma, &native] {
        std::fs::create_dir_all(d)?;
    }
    for f in crate::rules::compile::rule_files(rules).map_err(|e| anyhow::anyhow!("{e}"))? {
        let text = std::fs::read_to_string(&f)?;
        let name = f.file_name().ok_or_else(|| anyhow::anyhow!("rule file without a name"))?;
        std::fs::write(sigma.join(name), &text)?;
        if !crate::rules::sigma::looks_like_sigma(&text) {
            std::fs::write(native.join(name), &text)?;
        }
    }
    std::fs::write(native.join("native-pack.yaml"), NATIVE_PACK)?;
    // Both must compile to the same rules, or the comparison means nothing.
    let ids = |d: &Path| -> anyhow::Result<Vec<String>> {
        let set = crate::rules::load_dir(d).map_err(|e| anyhow::anyhow!("{}: {e}", d.display()))?;
        let mut v: Vec<String> = set.rules().map(|(m, _)| m.id.to_string()).collect();
        v.sort();
        Ok(v)
    };
    anyhow::ensure!(ids(&sigma)? == ids(&native)?, "the Sigma and native packs do not hold the same rules");
    Ok((sigma, native))
}

#[allow(clippy::too_many_arguments)]
pub fn compare(
    args: &RunArgs<'_>,
    phase: &Phase,
    brokers: &str,
    rules_spec: &StageSpec,
    rules_dir: &Path,
    events: u64,
    rounds: usize,
    run_id: &str,
) -> anyhow::Result<PackComparison> {
    let (sigma, native) = write_packs(rules_dir, args.log_dir)?;
    let mut out = PackComparison {
        events,
        native_events_per_sec: Vec::new(),
        sigma_events_per_sec: Vec::new(),
        native_cpu_seconds_per_million: Vec::new(),
        sigma_cpu_seconds_per_million: Vec::new(),
        ratio: f64::NAN,
    };
    for round in 0..rounds {
        for (name, dir) in [("native", &native), ("sigma", &sigma)] {
            let mut extra = args.extra_env.to_vec();
            extra.push(("AUDITFLOW_RULES_DIR".into(), dir.display().to_string()));
            extra.push(("AUDITFLOW_GROUP_ID".into(), format!("{}-rules-{name}-{round}", phase.prefix)));
            extra.push(("AUDITFLOW_REDIS_PREFIX".into(), format!("{run_id}:{name}:{round}:")));
            let run = RunArgs { extra_env: &extra, ..*args };
            let r = stages::run_alone(&run, phase, brokers, rules_spec, events)?;
            let (eps, cpu) = if name == "native" {
                (&mut out.native_events_per_sec, &mut out.native_cpu_seconds_per_million)
            } else {
                (&mut out.sigma_events_per_sec, &mut out.sigma_cpu_seconds_per_million)
            };
            eps.push(r.events_per_sec);
            cpu.push(r.usage.cpu_seconds_per_million);
        }
    }
    out.ratio = median(&out.sigma_events_per_sec) / median(&out.native_events_per_sec);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_packs_hold_the_same_rules() {
        let dir = tempfile::tempdir().unwrap();
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let (sigma, native) = write_packs(&rules, dir.path()).unwrap();
        assert!(native.join("native-pack.yaml").is_file() && sigma.join("auditflow-authentication.yml").is_file());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }
}
