//! Merkle trees over a chain's rows, hashed as RFC 9162 (Certificate Transparency v2) does.
//!
//! The leaf data are the chain's row hashes in `chain_seq` order:
//! `leaf = SHA-256(0x00 ‖ row_hash)`, `node = SHA-256(0x01 ‖ left ‖ right)`, the empty tree's
//! head is `SHA-256("")`, and a tree of n > 1 leaves splits at the largest power of two below
//! n. Inclusion and consistency proofs are RFC 9162 §2.1.3 and §2.1.4, so any implementation
//! of that RFC verifies them.
//!
//! `audit-persist` keeps only a [`Frontier`] per chain: the roots of the perfect subtrees the
//! tree's size decomposes into (one per set bit), which is all that appending needs.

use sha2::{Digest, Sha256};

use crate::ledger::Hash;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("cannot prove consistency from {from} to {to} leaves")]
    BadRange { from: u64, to: u64 },
    #[error("the proof has the wrong number of hashes")]
    WrongLength,
    #[error("the proof does not lead to the signed tree head")]
    RootMismatch,
    #[error("stored tree frontier is malformed")]
    BadFrontier,
}

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The head of a tree with no leaves.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly below `n` (n ≥ 2).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// Tree head over `leaves` (row hashes).
pub fn root<L: AsRef<[u8]>>(leaves: &[L]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaf_hash(leaves[0].as_ref()),
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// Audit path of leaf `index` in the tree over `leaves`, nearest sibling first.
pub fn inclusion_proof<L: AsRef<[u8]>>(leaves: &[L], index: u64) -> Result<Vec<Hash>, MerkleError> {
    let size = leaves.len() as u64;
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    fn path<L: AsRef<[u8]>>(leaves: &[L], m: usize, out: &mut Vec<Hash>) {
        let n = leaves.len();
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            path(&leaves[..k], m, out);
            out.push(root(&leaves[k..]));
        } else {
            path(&leaves[k..], m - k, out);
            out.push(root(&leaves[..k]));
        }
    }
    let mut out = Vec::new();
    path(leaves, index as usize, &mut out);
    Ok(out)
}

/// Check that `row_hash` is leaf `index` of the tree of `size` leaves whose head is `root`.
pub fn verify_inclusion(leaf: &[u8], index: u64, size: u64, proof: &[Hash], root: &Hash) -> Result<(), MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = leaf_hash(leaf);
    for p in proof {
        if snode == 0 {
            return Err(MerkleError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(MerkleError::WrongLength);
    }
    if &r != root {
        return Err(MerkleError::RootMismatch);
    }
    Ok(())
}

/// Proof that the tree of `from` leaves is a prefix of the tree over `leaves` (`to` leaves).
pub fn consistency_proof<L: AsRef<[u8]>>(leaves: &[L], from: u64) -> Result<Vec<Hash>, MerkleError> {
    let to = leaves.len() as u64;
    if from > to {
        return Err(MerkleError::BadRange { from, to });
    }
    if from == 0 || from == to {
        return Ok(Vec::new());
    }
    fn sub<L: AsRef<[u8]>>(leaves: &[L], m: usize, whole: bool, out: &mut Vec<Hash>) {
        let n = leaves.len();
        if m == n {
            if !whole {
                out.push(root(leaves));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            sub(&leaves[..k], m, whole, out);
            out.push(root(&leaves[k..]));
        } else {
            sub(&leaves[k..], m - k, false, out);
            out.push(root(&leaves[..k]));
        }
    }
    let mut out = Vec::new();
    sub(leaves, from as usize, true, &mut out);
    Ok(out)
}

/// Check that the tree of `from` leaves with head `from_root` is a prefix of the tree of `to`
/// leaves with head `to_root`. A tree of no leaves is a prefix of every tree.
pub fn verify_consistency(from: u64, to: u64, from_root: &Hash, to_root: &Hash, proof: &[Hash]) -> Result<(), MerkleError> {
    if from > to {
        return Err(MerkleError::BadRange { from, to });
    }
    if from == 0 {
        return if proof.is_empty() && from_root == &empty_root() { Ok(()) } else { Err(MerkleError::WrongLength) };
    }
    if from == to {
        if !proof.is_empty() {
            return Err(MerkleError::WrongLength);
        }
        return if from_root == to_root { Ok(()) } else { Err(MerkleError::RootMismatch) };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if from.is_power_of_two() {
        path.push(*from_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else { return Err(MerkleError::WrongLength) };
    let (mut fnode, mut snode) = (from - 1, to - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return Err(MerkleError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(MerkleError::WrongLength);
    }
    if &fr != from_root || &sr != to_root {
        return Err(MerkleError::RootMismatch);
    }
    Ok(())
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest first.
/// Appending costs O(1) amortised hashes and the state is O(log n) hashes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    roots: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// The frontier of an existing tree, rebuilt from all its leaves (chains written before
    /// trees were kept).
    pub fn from_leaves<L: AsRef<[u8]>>(leaves: &[L]) -> Frontier {
        let mut f = Frontier::new();
        for l in leaves {
            f.push(l.as_ref());
        }
        f
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: &[u8]) {
        let mut h = leaf_hash(leaf);
        let mut level = 0;
        while (self.size >> level) & 1 == 1 {
            // Every set bit below the new leaf's position closes a perfect subtree.
            let left = self.roots.pop().unwrap_or_default();
            h = node_hash(&left, &h);
            level += 1;
        }
        self.roots.push(h);
        self.size += 1;
    }

    pub fn root(&self) -> Hash {
        let mut it = self.roots.iter().rev();
        let Some(last) = it.next() else { return empty_root() };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }

    /// `size` (8 bytes, big-endian) then the subtree roots, largest first.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 * self.roots.len());
        out.extend_from_slice(&self.size.to_be_bytes());
        for r in &self.roots {
            out.extend_from_slice(r);
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Frontier, MerkleError> {
        let (size, rest) = b.split_at_checked(8).ok_or(MerkleError::BadFrontier)?;
        let size = u64::from_be_bytes(size.try_into().map_err(|_| MerkleError::BadFrontier)?);
        if rest.len() != 32 * size.count_ones() as usize {
            return Err(MerkleError::BadFrontier);
        }
        let roots = rest.chunks_exact(32).map(|c| c.try_into().unwrap_or_default()).collect();
        Ok(Frontier { size, roots })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| Sha256::digest(format!("row {i}")).into()).collect()
    }


    /// Certificate Transparency's published reference tree (8 leaves of varying length).
    fn ct_leaves() -> Vec<Vec<u8>> {
        ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
            .iter()
            .map(|h| hex::decode(h).unwrap())
            .collect()
    }

    #[test]
    fn known_answers_from_certificate_transparency() {
        let roots = [
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let ls = ct_leaves();
        let mut f = Frontier::new();
        assert_eq!(hex::encode(f.root()), roots[0]);
        for n in 1..=8 {
            f.push(&ls[n - 1]);
            assert_eq!(hex::encode(root(&ls[..n])), roots[n], "size {n}");
            assert_eq!(hex::encode(f.root()), roots[n], "frontier at size {n}");
        }
        let hx = |v: Vec<Hash>| v.iter().map(hex::encode).collect::<Vec<_>>();
        assert_eq!(
            hx(inclusion_proof(&ls, 0).unwrap()),
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"
            ]
        );
        assert_eq!(
            hx(inclusion_proof(&ls, 5).unwrap()),
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"
            ]
        );
        assert_eq!(
            hx(consistency_proof(&ls, 6).unwrap()),
            [
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"
            ]
        );
        assert_eq!(
            hx(consistency_proof(&ls, 1).unwrap()),
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"
            ]
        );
    }

    #[test]
    fn frontier_matches_the_recursive_definition_at_every_size() {
        let ls = leaves(70);
        let mut f = Frontier::new();
        assert_eq!(f.root(), empty_root());
        for (i, l) in ls.iter().enumerate() {
            f.push(l);
            assert_eq!(f.root(), root(&ls[..=i]), "size {}", i + 1);
            assert_eq!(Frontier::from_bytes(&f.to_bytes()), Ok(f.clone()));
        }
        assert_eq!(Frontier::from_leaves(&ls), f);
        assert!(Frontier::from_bytes(&[0, 0, 0, 0, 0, 0, 0, 3, 1]).is_err());
        assert!(Frontier::from_bytes(&[0, 1]).is_err());
    }

    #[test]
    fn every_inclusion_proof_verifies_and_no_altered_one_does() {
        let ls = leaves(23);
        for n in 1..=ls.len() {
            let head = root(&ls[..n]);
            for m in 0..n {
                let p = inclusion_proof(&ls[..n], m as u64).unwrap();
                assert_eq!(verify_inclusion(&ls[m], m as u64, n as u64, &p, &head), Ok(()), "{m} of {n}");
                if m + 1 < n {
                    assert!(verify_inclusion(&ls[m], m as u64 + 1, n as u64, &p, &head).is_err());
                }
                for i in 0..p.len() {
                    let mut bad = p.clone();
                    bad[i][7] ^= 1;
                    assert!(verify_inclusion(&ls[m], m as u64, n as u64, &bad, &head).is_err());
                }
                let mut longer = p.clone();
                longer.push(head);
                assert!(verify_inclusion(&ls[m], m as u64, n as u64, &longer, &head).is_err());
            }
        }
        assert!(inclusion_proof(&ls[..3], 3).is_err());
    }

    #[test]
    fn every_consistency_proof_verifies_and_no_altered_one_does() {
        let ls = leaves(21);
        for n in 1..=ls.len() {
            let to_root = root(&ls[..n]);
            for m in 0..=n {
                let from_root = root(&ls[..m]);
                let p = consistency_proof(&ls[..n], m as u64).unwrap();
                assert_eq!(verify_consistency(m as u64, n as u64, &from_root, &to_root, &p), Ok(()), "{m} to {n}");
                for i in 0..p.len() {
                    let mut bad = p.clone();
                    bad[i][0] ^= 0x80;
                    assert!(verify_consistency(m as u64, n as u64, &from_root, &to_root, &bad).is_err());
                }
                if m > 0 && m < n {
                    // A rewritten old tree is not a prefix of the new one.
                    let mut other = ls[..n].to_vec();
                    other[m - 1][3] ^= 1;
                    assert!(verify_consistency(m as u64, n as u64, &root(&other[..m]), &to_root, &p).is_err());
                }
            }
        }
        assert!(consistency_proof(&ls[..3], 4).is_err());
    }
}
