//! The autonomous system of an address: from MaxMind-format ASN databases
//! (`autonomous_system_number`, `autonomous_system_organization`, as GeoLite2-ASN has them) or
//! from range tables in CSV (`first address,last address,number,organisation`, as npm
//! `@ip-location-db/asn` ships them), one file or a directory of them.

use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::geo::{built_at, covers};
use crate::error::ConfigError;
use crate::event::Asn;

const SETTING: &str = "enrich.asn_db";

/// One range of a CSV table: first and last address, the AS number and the index of its
/// organisation. IPv4 and IPv6 ranges are kept apart so the half million IPv4 ones take 16
/// bytes each, not 40.
type Range<A> = (A, A, u32, u32);

/// Opened ASN data.
#[derive(Default)]
pub struct AsnDb {
    readers: Vec<maxminddb::Reader<Vec<u8>>>,
    /// Sorted by first address, not overlapping.
    ranges4: Vec<Range<u32>>,
    ranges6: Vec<Range<u128>>,
    organisations: Vec<Box<str>>,
    built: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for AsnDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsnDb")
            .field("databases", &self.readers.len())
            .field("ranges", &(self.ranges4.len() + self.ranges6.len()))
            .field("built", &self.built)
            .finish()
    }
}

/// The range of `ranges` holding `x`, if one does.
fn find<A: Ord + Copy>(ranges: &[Range<A>], x: A) -> Option<(u32, u32)> {
    let i = ranges.partition_point(|r| r.0 <= x);
    let &(first, last, number, org) = ranges.get(i.checked_sub(1)?)?;
    (first <= x && x <= last).then_some((number, org))
}

#[derive(Deserialize)]
struct AsnRecord<'a> {
    autonomous_system_number: Option<u32>,
    #[serde(borrow)]
    autonomous_system_organization: Option<&'a str>,
}

/// A CSV field: plain, or double-quoted with `""` for a quote.
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(4);
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

impl AsnDb {
    /// Opens the file, or every `.mmdb` and `.csv` file of a directory. A CSV table's date is its
    /// file's modification time (`scripts/stack geoip` sets it to the data's date).
    pub fn open(path: &Path) -> Result<AsnDb, ConfigError> {
        let files: Vec<PathBuf> = if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| ConfigError::new(SETTING, format!("cannot read {}: {e}", path.display())))?;
            let mut v: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "mmdb" || x == "csv"))
                .collect();
            v.sort();
            v
        } else {
            vec![path.to_path_buf()]
        };
        if files.is_empty() {
            return Err(ConfigError::new(SETTING, format!("no .mmdb or .csv file in {}", path.display())));
        }
        let mut db = AsnDb::default();
        let mut dates = Vec::new();
        for f in files {
            if f.extension().is_some_and(|x| x == "csv") {
                db.load_csv(&f)?;
                let modified = std::fs::metadata(&f).and_then(|m| m.modified()).ok().map(DateTime::<Utc>::from);
                dates.extend(modified);
            } else {
                let r = open_mmdb(&f)?;
                dates.extend(built_at(&r));
                db.readers.push(r);
            }
        }
        db.readers.sort_by_key(|r| r.metadata.ip_version);
        db.ranges4.sort_unstable_by_key(|r| r.0);
        db.ranges6.sort_unstable_by_key(|r| r.0);
        db.ranges4.shrink_to_fit();
        db.ranges6.shrink_to_fit();
        db.organisations.shrink_to_fit();
        db.built = dates.into_iter().min();
        Ok(db)
    }

    /// Read a table line by line: the whole text is never held (it is 30 MB, and a stage's peak
    /// memory counts).
    fn load_csv(&mut self, path: &Path) -> Result<(), ConfigError> {
        use std::io::BufRead;
        let cannot = |e: std::io::Error| ConfigError::new(SETTING, format!("cannot read {}: {e}", path.display()));
        let file = std::fs::File::open(path).map_err(cannot)?;
        let mut index: std::collections::HashMap<Box<str>, u32> =
            self.organisations.iter().enumerate().map(|(i, o)| (o.clone(), i as u32)).collect();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(cannot)?;
            if line.trim().is_empty() {
                continue;
            }
            let bad = |why: &str| ConfigError::new(SETTING, format!("{}:{}: {why}", path.display(), n + 1));
            let f = csv_fields(&line);
            let [first, last, number, org] = f.as_slice() else { return Err(bad("not first,last,number,organisation")) };
            let (Ok(first), Ok(last)) = (first.parse::<IpAddr>(), last.parse::<IpAddr>()) else { return Err(bad("not an address range")) };
            let number: u32 = number.trim().parse().map_err(|_| bad("not an AS number"))?;
            let org_index = match index.get(org.as_str()) {
                Some(i) => *i,
                None => {
                    let i = self.organisations.len() as u32;
                    self.organisations.push(org.as_str().into());
                    index.insert(org.as_str().into(), i);
                    i
                }
            };
            match (first, last) {
                (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => self.ranges4.push((u32::from(a), u32::from(b), number, org_index)),
                (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => self.ranges6.push((u128::from(a), u128::from(b), number, org_index)),
                _ => return Err(bad("not an address range")),
            }
        }
        Ok(())
    }

    /// When the (oldest) data was made.
    pub fn built(&self) -> Option<DateTime<Utc>> {
        self.built
    }

    /// The autonomous system announcing `ip`, if the data knows one.
    pub fn lookup(&self, ip: IpAddr) -> Option<Asn> {
        // An IPv4-mapped IPv6 address is its IPv4 address.
        let found = match ip {
            IpAddr::V4(v4) => find(&self.ranges4, u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => find(&self.ranges4, u32::from(v4)),
                None => find(&self.ranges6, u128::from(v6)),
            },
        };
        if let Some((number, org)) = found {
            let organization = self.organisations.get(org as usize).filter(|o| !o.is_empty()).map(|o| o.to_string());
            return Some(Asn { number, organization });
        }
        self.readers.iter().filter(|r| covers(r, ip)).find_map(|r| {
            let rec = catch_unwind(AssertUnwindSafe(|| r.lookup::<AsnRecord>(ip))).ok()?.ok()?;
            let number = rec.autonomous_system_number?;
            Some(Asn { number, organization: rec.autonomous_system_organization.filter(|o| !o.is_empty()).map(str::to_string) })
        })
    }
}

fn open_mmdb(path: &Path) -> Result<maxminddb::Reader<Vec<u8>>, ConfigError> {
    let shown = path.display();
    let reader = maxminddb::Reader::open_readfile(path).map_err(|e| ConfigError::new(SETTING, format!("cannot open {shown}: {e}")))?;
    if !reader.metadata.database_type.to_ascii_lowercase().contains("asn") {
        return Err(ConfigError::new(SETTING, format!("{shown} is a {:?} database; an ASN database is needed", reader.metadata.database_type)));
    }
    Ok(reader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_tables_of_both_families_are_looked_up_by_range() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("asn-ipv4.csv"),
            "1.0.0.0,1.0.0.255,13335,\"Cloudflare, Inc.\"\n8.8.8.0,8.8.8.255,15169,Google LLC\n9.0.0.0,9.0.0.255,64500,\"The \"\"Quoted\"\" Co\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("asn-ipv6.csv"), "2001:4860::,2001:4860:ffff:ffff:ffff:ffff:ffff:ffff,15169,Google LLC\n").unwrap();
        let db = AsnDb::open(dir.path()).unwrap();
        let at = |ip: &str| db.lookup(ip.parse().unwrap());
        assert_eq!(at("1.0.0.1"), Some(Asn { number: 13335, organization: Some("Cloudflare, Inc.".into()) }));
        assert_eq!(at("8.8.8.8").map(|a| a.number), Some(15169));
        assert_eq!(at("2001:4860:4860::8888").map(|a| a.number), Some(15169));
        assert_eq!(at("9.0.0.7").and_then(|a| a.organization), Some("The \"Quoted\" Co".into()));
        assert_eq!(at("8.8.9.1"), None, "between ranges");
        assert_eq!(at("0.0.0.1"), None, "before the first");
        assert_eq!(at("::ffff:8.8.8.8").map(|a| a.number), Some(15169), "an IPv4-mapped address is its IPv4 address");
        assert!(db.built().is_some(), "dated by the files");
        std::fs::write(dir.path().join("bad.csv"), "1.0.0.0,not-an-address,1,x\n").unwrap();
        let e = AsnDb::open(dir.path()).unwrap_err();
        assert!(e.reason.contains("bad.csv:1") && e.reason.contains("address range"), "{e}");
    }

    #[test]
    fn an_asn_database_of_the_maxmind_layout_is_read_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("asn.mmdb");
        let mut w = crate::enrich::mmdb_writer::MmdbWriter::new().database_type("GeoLite2-ASN").build_epoch(1_781_000_000);
        w.insert_asn("81.2.69.0/24", 20712, "Andrews & Arnold Ltd").unwrap();
        w.write_to(&path).unwrap();
        let db = AsnDb::open(&path).unwrap();
        assert_eq!(db.lookup("81.2.69.142".parse().unwrap()), Some(Asn { number: 20712, organization: Some("Andrews & Arnold Ltd".into()) }));
        assert_eq!(db.built().map(|d| d.timestamp()), Some(1_781_000_000));
        let city = dir.path().join("city.mmdb");
        crate::enrich::mmdb_writer::MmdbWriter::new().write_to(&city).unwrap();
        assert!(AsnDb::open(&city).unwrap_err().reason.contains("an ASN database is needed"));
    }
}
