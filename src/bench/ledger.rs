//! What the ledger's outside evidence costs persist per event: the Merkle frontier advanced
//! for every row, and per batch one tree head and one Ed25519 checkpoint signature for each
//! chain the batch extends. Measured in-process on this thread's CPU clock, with the batch
//! size and chain count persist showed in the same run, and compared with persist's own CPU
//! per event (which includes this work).

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ledger::{Checkpoint, Hash, LedgerSigner};
use crate::merkle::Frontier;
use crate::privacy::SecretKey;

#[derive(Debug, Clone, Serialize)]
pub struct LedgerEvidence {
    pub events: u64,
    pub chains: usize,
    pub batch_events: usize,
    pub signatures: u64,
    /// Frontier pushes, tree heads, signatures and frontier encodings, per million events.
    pub cpu_seconds_per_million: f64,
    /// persist's process CPU per million events in this run (evidence included).
    pub persist_cpu_seconds_per_million: Option<f64>,
    /// evidence / persist CPU: the share of persist's cost per event.
    pub share_of_persist_cpu: Option<f64>,
    /// evidence / (persist CPU − evidence): the increase over persist without it.
    pub increase_over_persist_without: Option<f64>,
    /// Checkpoint rows written per million event rows (the database side of the same work).
    pub checkpoint_rows_per_million: f64,
}

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec it is given and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Run the evidence work for `events` rows spread over `chains` chains in batches of
/// `batch_events`, as persist's `write_batch` does it.
pub fn measure(events: u64, chains: usize, batch_events: usize, persist_cpu_seconds_per_million: Option<f64>) -> LedgerEvidence {
    let chains = chains.max(1);
    let batch_events = batch_events.max(1);
    let signer = LedgerSigner::new(&SecretKey([0x11; 32]));
    let ids: Vec<String> = (0..chains).map(|c| format!("audit-enriched/{c}/2026-12")).collect();
    // Row hashes are computed by persist with or without trees: made up front, not counted.
    let hashes: Vec<Hash> = (0..events.min(1_000_000)).map(|i| Sha256::digest(i.to_be_bytes()).into()).collect();
    let mut trees: Vec<Frontier> = vec![Frontier::new(); chains];
    let mut signatures = 0u64;
    let mut sink = 0u8;
    let now = chrono::Utc::now();
    let start = thread_cpu_seconds();
    let mut done = 0u64;
    while done < events {
        let n = (events - done).min(batch_events as u64);
        let mut touched = vec![false; chains];
        for i in done..done + n {
            let c = (i % chains as u64) as usize;
            trees[c].push(&hashes[(i % hashes.len() as u64) as usize]);
            touched[c] = true;
        }
        for (c, tree) in trees.iter().enumerate().filter(|(c, _)| touched[*c]) {
            let root = tree.root();
            let cp = Checkpoint::sign(&signer, &ids[c], tree.size() as i64, root, root, now);
            sink ^= cp.signature[0] ^ tree.to_bytes()[0];
            signatures += 1;
        }
        done += n;
    }
    let cpu = thread_cpu_seconds() - start;
    std::hint::black_box(sink);
    let per_million = cpu * 1e6 / events.max(1) as f64;
    LedgerEvidence {
        events,
        chains,
        batch_events,
        signatures,
        cpu_seconds_per_million: per_million,
        persist_cpu_seconds_per_million,
        share_of_persist_cpu: persist_cpu_seconds_per_million.filter(|p| *p > 0.0).map(|p| per_million / p),
        increase_over_persist_without: persist_cpu_seconds_per_million.filter(|p| *p > per_million).map(|p| per_million / (p - per_million)),
        checkpoint_rows_per_million: signatures as f64 * 1e6 / events.max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_signature_per_chain_per_batch() {
        let e = measure(10_000, 4, 1_000, Some(1.0));
        assert_eq!(e.signatures, 40);
        assert_eq!(e.checkpoint_rows_per_million, 4_000.0);
        assert!(e.cpu_seconds_per_million > 0.0);
    }
}
