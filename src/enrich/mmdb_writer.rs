//! A minimal writer for the MaxMind DB format, so tests can build small City databases with
//! known contents (the real GeoLite2 files are licensed and large).
//!
//! Format (MaxMind DB spec 2.0), as written here:
//!
//! 1. **Search tree.** A binary trie over the 128 bits of an IPv6 address, one node per
//!    internal vertex, numbered from 0 (the root). A node is two records (left = bit 0,
//!    right = bit 1) of `record_size` bits each: 24 (6 bytes per node), 28 (7 bytes; the
//!    middle byte holds the high nibbles, left's first) or 32 (8 bytes), big-endian. A record
//!    value `v` means: `v < node_count` → go to node `v`; `v == node_count` → no data;
//!    `v > node_count` → data at offset `v - node_count - 16` in the data section.
//!    IPv4 networks live under `::/96` (`::a.b.c.d`), as in GeoLite2 `ip_version 6` files;
//!    `::ffff:0:0/96` is aliased to the same subtree so IPv4-mapped lookups find them too.
//! 2. **16 zero bytes** separating tree and data.
//! 3. **Data section.** Values are a control byte (type in the top 3 bits, size in the low
//!    5; type 0 means "extended", the real type − 7 in the next byte) followed by the payload.
//!    Sizes < 29 fit in the control byte; 29, 30, 31 mean 1, 2, 3 following bytes holding
//!    `size − 29`, `size − 285`, `size − 65 821`. Types used: 2 utf8 string, 3 double
//!    (8 bytes BE), 5 uint16, 6 uint32, 7 map (size = pairs; key string, then value),
//!    9 uint64 (extended), 11 array (extended). Unsigned integers drop leading zero bytes.
//! 4. **Metadata**: the marker `\xAB\xCD\xEFMaxMind.com` then a map with `node_count`,
//!    `record_size`, `ip_version`, `database_type`, `languages`, `binary_format_major_version`,
//!    `binary_format_minor_version`, `build_epoch`, `description`.
//!
//! ```no_run
//! use auditflow::enrich::mmdb_writer::{CityRecord, MmdbWriter};
//! # fn main() -> std::io::Result<()> {
//! MmdbWriter::new()
//!     .insert("8.8.8.0/24", CityRecord { country_code: Some("US".into()), ..Default::default() })?
//!     .write_to("/tmp/test-city.mmdb")?;
//! # Ok(()) }
//! ```

use std::io;
use std::net::IpAddr;
use std::path::Path;

use crate::event::Location;

/// What a network maps to: the City fields the enricher reads (`country.iso_code`,
/// `country.names.en`, `subdivisions[0].names.en`, `city.names.en`, `location.latitude`,
/// `location.longitude`).
pub type CityRecord = Location;

/// What one network of the database holds.
#[derive(Debug, Clone)]
enum Record {
    City(CityRecord),
    /// An autonomous system: number and organisation (GeoLite2-ASN's fields).
    Asn(u32, String),
}

const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";
const SEPARATOR_LEN: usize = 16;

/// Builds a small `GeoLite2-City`-shaped database in memory.
#[derive(Debug, Clone)]
pub struct MmdbWriter {
    /// (network as a 128-bit IPv6 value, prefix length in the IPv6 tree, record)
    entries: Vec<(u128, u32, Record)>,
    database_type: String,
    /// City records in ip-location-db's flat layout instead of MaxMind's.
    flat: bool,
    build_epoch: u64,
    record_size: Option<u16>,
}

impl Default for MmdbWriter {
    fn default() -> Self {
        Self::new()
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl MmdbWriter {
    pub fn new() -> Self {
        MmdbWriter {
            entries: Vec::new(),
            database_type: "GeoLite2-City".into(),
            flat: false,
            build_epoch: 0,
            record_size: None,
        }
    }

    /// Overrides `database_type` (default `GeoLite2-City`).
    pub fn database_type(mut self, t: &str) -> Self {
        self.database_type = t.to_owned();
        self
    }

    /// Writes city records in ip-location-db's flat layout (`country_code`, `state1`, `city`,
    /// `latitude`, `longitude`; missing text as `""`), as its npm packages have them.
    pub fn flat(mut self) -> Self {
        self.flat = true;
        self
    }

    /// Maps `cidr` to an autonomous system (for an ASN database).
    pub fn insert_asn(&mut self, cidr: &str, number: u32, organization: &str) -> io::Result<&mut Self> {
        self.insert(cidr, CityRecord::default())?;
        if let Some(last) = self.entries.last_mut() {
            last.2 = Record::Asn(number, organization.to_string());
        }
        Ok(self)
    }

    /// Sets `build_epoch` (default 0, so output is reproducible).
    pub fn build_epoch(mut self, epoch: u64) -> Self {
        self.build_epoch = epoch;
        self
    }

    /// Forces a record size of 24, 28 or 32 bits (default: the smallest that fits).
    pub fn record_size(mut self, bits: u16) -> Self {
        self.record_size = Some(bits);
        self
    }

    /// Maps `cidr` (`"1.2.3.0/24"`, `"2001:db8::/32"`, or a bare address) to `record`. Host
    /// bits are ignored. Where networks overlap, the more specific one wins, whatever the order
    /// of insertion; for the same network the later insert wins.
    pub fn insert(&mut self, cidr: &str, record: CityRecord) -> io::Result<&mut Self> {
        let (addr, prefix) = match cidr.split_once('/') {
            Some((a, p)) => {
                let p = p
                    .parse::<u8>()
                    .map_err(|_| invalid(format!("bad prefix in {cidr:?}")))?;
                (a, Some(p))
            }
            None => (cidr, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| invalid(format!("bad address in {cidr:?}")))?;
        let prefix = prefix.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
        self.insert_net(addr, prefix, record)
    }

    /// [`insert`](Self::insert) with the address and prefix length given separately.
    pub fn insert_net(
        &mut self,
        addr: IpAddr,
        prefix: u8,
        record: CityRecord,
    ) -> io::Result<&mut Self> {
        let (bits, len) = match addr {
            IpAddr::V4(a) if prefix <= 32 => (u128::from(u32::from(a)), u32::from(prefix) + 96),
            IpAddr::V6(a) if (1..=128).contains(&prefix) => (u128::from(a), u32::from(prefix)),
            _ => {
                return Err(invalid(format!(
                    "prefix /{prefix} is out of range for {addr}"
                )))
            }
        };
        let mask = u128::MAX << (128 - len);
        self.entries.push((bits & mask, len, Record::City(record)));
        Ok(self)
    }

    /// The database file's bytes.
    pub fn to_bytes(&self) -> io::Result<Vec<u8>> {
        let nodes = self.build_tree();
        let node_count = nodes.len() as u64;

        let mut data = Vec::new();
        let mut offsets = Vec::with_capacity(self.entries.len());
        for (_, _, rec) in &self.entries {
            offsets.push(data.len() as u64);
            let value = match rec {
                Record::City(c) if self.flat => flat_value(c),
                Record::City(c) => city_value(c),
                Record::Asn(n, org) => V::Map(vec![("autonomous_system_number", V::U32(*n)), ("autonomous_system_organization", V::Str(org))]),
            };
            encode(&value, &mut data);
        }

        let max_value = node_count + SEPARATOR_LEN as u64 + data.len() as u64;
        let record_size = match self.record_size {
            Some(bits @ (24 | 28 | 32)) if max_value < (1u64 << bits) => bits,
            Some(bits) => {
                return Err(invalid(format!(
                    "record size {bits} cannot address {max_value}"
                )));
            }
            None if max_value < 1 << 24 => 24,
            None if max_value < 1 << 28 => 28,
            None if max_value < 1 << 32 => 32,
            None => return Err(invalid("database too large".into())),
        };
        let value = |r: Rec| -> u64 {
            match r {
                Rec::Empty => node_count,
                Rec::Node(n) => n as u64,
                Rec::Data(i) => node_count + SEPARATOR_LEN as u64 + offsets[i],
            }
        };

        let mut out = Vec::with_capacity(nodes.len() * 8 + data.len() + 256);
        for [l, r] in &nodes {
            let (l, r) = (value(*l), value(*r));
            match record_size {
                24 => {
                    out.extend_from_slice(&l.to_be_bytes()[5..]);
                    out.extend_from_slice(&r.to_be_bytes()[5..]);
                }
                28 => {
                    out.extend_from_slice(&l.to_be_bytes()[5..]);
                    out.push((((l >> 24) & 0x0f) << 4 | ((r >> 24) & 0x0f)) as u8);
                    out.extend_from_slice(&r.to_be_bytes()[5..]);
                }
                _ => {
                    out.extend_from_slice(&l.to_be_bytes()[4..]);
                    out.extend_from_slice(&r.to_be_bytes()[4..]);
                }
            }
        }
        out.extend_from_slice(&[0u8; SEPARATOR_LEN]);
        out.extend_from_slice(&data);
        out.extend_from_slice(METADATA_MARKER);
        let metadata = V::Map(vec![
            ("binary_format_major_version", V::U16(2)),
            ("binary_format_minor_version", V::U16(0)),
            ("build_epoch", V::U64(self.build_epoch)),
            ("database_type", V::Str(&self.database_type)),
            (
                "description",
                V::Map(vec![("en", V::Str("auditflow test database"))]),
            ),
            ("ip_version", V::U16(6)),
            ("languages", V::Array(vec![V::Str("en")])),
            ("node_count", V::U32(node_count as u32)),
            ("record_size", V::U16(record_size)),
        ]);
        encode(&metadata, &mut out);
        Ok(out)
    }

    /// Writes the database to `path`.
    pub fn write_to(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, self.to_bytes()?)
    }

    fn build_tree(&self) -> Vec<[Rec; 2]> {
        let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty, Rec::Empty]];
        // Broader networks first, so more specific ones split their leaves afterwards.
        let mut order: Vec<usize> = (0..self.entries.len()).collect();
        order.sort_by_key(|&i| self.entries[i].1);
        for i in order {
            let (bits, len, _) = self.entries[i];
            let mut node = 0;
            for depth in 0..len {
                let bit = ((bits >> (127 - depth)) & 1) as usize;
                if depth + 1 == len {
                    nodes[node][bit] = Rec::Data(i);
                    break;
                }
                node = match nodes[node][bit] {
                    Rec::Node(n) => n,
                    leaf => {
                        nodes.push([leaf, leaf]);
                        let n = nodes.len() - 1;
                        nodes[node][bit] = Rec::Node(n);
                        n
                    }
                };
            }
        }
        alias_ipv4_mapped(&mut nodes);
        nodes
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rec {
    Empty,
    Node(usize),
    Data(usize),
}

/// Points `::ffff:0:0/96` at the IPv4 subtree under `::/96`, unless IPv6 entries already
/// decide that range.
fn alias_ipv4_mapped(nodes: &mut Vec<[Rec; 2]>) {
    let mut node = 0;
    let mut v4_root = Rec::Empty;
    for depth in 0..96 {
        match nodes[node][0] {
            Rec::Node(n) if depth < 95 => node = n,
            r if depth == 95 => v4_root = r,
            _ => return,
        }
    }
    if v4_root == Rec::Empty {
        return;
    }
    let mapped: u128 = 0xffff << 32;
    let mut node = 0;
    for depth in 0..96u32 {
        let bit = ((mapped >> (127 - depth)) & 1) as usize;
        if depth == 95 {
            if nodes[node][bit] == Rec::Empty {
                nodes[node][bit] = v4_root;
            }
            return;
        }
        node = match nodes[node][bit] {
            Rec::Node(n) => n,
            Rec::Data(_) => return,
            Rec::Empty => {
                nodes.push([Rec::Empty, Rec::Empty]);
                let n = nodes.len() - 1;
                nodes[node][bit] = Rec::Node(n);
                n
            }
        };
    }
}

/// The data-section values this writer needs.
enum V<'a> {
    Str(&'a str),
    F64(f64),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(&'a str, V<'a>)>),
    Array(Vec<V<'a>>),
}

fn names(s: &Option<String>) -> Option<(&'static str, V<'_>)> {
    s.as_deref()
        .map(|n| ("names", V::Map(vec![("en", V::Str(n))])))
}

/// ip-location-db's layout: every key present, missing text as "".
fn flat_value(rec: &CityRecord) -> V<'_> {
    fn text(s: &Option<String>) -> V<'_> {
        V::Str(s.as_deref().unwrap_or(""))
    }
    let mut top = vec![("country_code", text(&rec.country_code)), ("state1", text(&rec.region)), ("city", text(&rec.city))];
    if let Some(lat) = rec.latitude {
        top.push(("latitude", V::F64(lat)));
    }
    if let Some(lon) = rec.longitude {
        top.push(("longitude", V::F64(lon)));
    }
    V::Map(top)
}

fn city_value(rec: &CityRecord) -> V<'_> {
    let mut top = Vec::new();
    let mut country = Vec::new();
    if let Some(code) = &rec.country_code {
        country.push(("iso_code", V::Str(code)));
    }
    country.extend(names(&rec.country));
    if !country.is_empty() {
        top.push(("country", V::Map(country)));
    }
    if let Some(n) = names(&rec.region) {
        top.push(("subdivisions", V::Array(vec![V::Map(vec![n])])));
    }
    if let Some(n) = names(&rec.city) {
        top.push(("city", V::Map(vec![n])));
    }
    let mut location = Vec::new();
    if let Some(lat) = rec.latitude {
        location.push(("latitude", V::F64(lat)));
    }
    if let Some(lon) = rec.longitude {
        location.push(("longitude", V::F64(lon)));
    }
    if !location.is_empty() {
        top.push(("location", V::Map(location)));
    }
    V::Map(top)
}

fn control(out: &mut Vec<u8>, type_num: u8, size: usize) {
    let (low, extra): (u8, &[u8]) = match size {
        0..=28 => (size as u8, &[]),
        29..=284 => (29, &[(size - 29) as u8]),
        285..=65_820 => (30, &((size - 285) as u16).to_be_bytes()),
        _ => (31, &((size - 65_821) as u32).to_be_bytes()[1..]),
    };
    if type_num <= 7 {
        out.push(type_num << 5 | low);
    } else {
        out.push(low);
        out.push(type_num - 7);
    }
    out.extend_from_slice(extra);
}

fn uint(out: &mut Vec<u8>, type_num: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, type_num, 8 - skip);
    out.extend_from_slice(&bytes[skip..]);
}

fn encode(v: &V<'_>, out: &mut Vec<u8>) {
    match v {
        V::Str(s) => {
            control(out, 2, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        V::F64(f) => {
            control(out, 3, 8);
            out.extend_from_slice(&f.to_be_bytes());
        }
        V::U16(n) => uint(out, 5, u64::from(*n)),
        V::U32(n) => uint(out, 6, u64::from(*n)),
        V::U64(n) => uint(out, 9, *n),
        V::Map(pairs) => {
            control(out, 7, pairs.len());
            for (k, v) in pairs {
                encode(&V::Str(k), out);
                encode(v, out);
            }
        }
        V::Array(items) => {
            control(out, 11, items.len());
            for i in items {
                encode(i, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maxminddb::{geoip2, Reader};

    fn rec(cc: &str, country: &str, region: &str, city: &str, lat: f64, lon: f64) -> CityRecord {
        CityRecord {
            country_code: Some(cc.into()),
            country: Some(country.into()),
            region: Some(region.into()),
            city: Some(city.into()),
            latitude: Some(lat),
            longitude: Some(lon),
        }
    }

    fn sample() -> MmdbWriter {
        let mut w = MmdbWriter::new();
        w.insert(
            "8.8.8.0/24",
            rec(
                "US",
                "United States",
                "California",
                "Mountain View",
                37.386,
                -122.0838,
            ),
        )
        .unwrap()
        .insert(
            "81.2.69.0/24",
            rec(
                "GB",
                "United Kingdom",
                "England",
                "London",
                51.5142,
                -0.0931,
            ),
        )
        .unwrap()
        .insert(
            "81.2.0.0/16",
            CityRecord {
                country_code: Some("GB".into()),
                ..Default::default()
            },
        )
        .unwrap()
        .insert(
            "2001:4860::/32",
            rec("US", "United States", "", "Ashburn", 39.0, -77.5),
        )
        .unwrap()
        .insert(
            "1.1.1.1",
            CityRecord {
                city: Some("Sydney ünï".into()),
                ..Default::default()
            },
        )
        .unwrap();
        w
    }

    fn lookup(bytes: &[u8], ip: &str) -> Option<geoip2::City<'static>> {
        let reader = Reader::from_source(bytes.to_vec()).unwrap();
        let reader: &'static Reader<Vec<u8>> = Box::leak(Box::new(reader));
        reader.lookup::<geoip2::City>(ip.parse().unwrap()).ok()
    }

    fn city_name<'a>(c: &geoip2::City<'a>) -> Option<&'a str> {
        c.city.as_ref()?.names.as_ref()?.get("en").copied()
    }

    #[test]
    fn maxminddb_reads_what_we_write() {
        let bytes = sample().to_bytes().unwrap();
        let reader = Reader::from_source(bytes.clone()).unwrap();
        assert_eq!(reader.metadata.database_type, "GeoLite2-City");
        assert_eq!(reader.metadata.ip_version, 6);
        assert_eq!(reader.metadata.record_size, 24);
        assert_eq!(reader.metadata.languages, vec!["en".to_string()]);

        let c = lookup(&bytes, "8.8.8.8").unwrap();
        assert_eq!(c.country.as_ref().unwrap().iso_code, Some("US"));
        assert_eq!(
            c.country.as_ref().unwrap().names.as_ref().unwrap()["en"],
            "United States"
        );
        assert_eq!(
            c.subdivisions.as_ref().unwrap()[0].names.as_ref().unwrap()["en"],
            "California"
        );
        assert_eq!(city_name(&c), Some("Mountain View"));
        let loc = c.location.as_ref().unwrap();
        assert_eq!(
            (loc.latitude, loc.longitude),
            (Some(37.386), Some(-122.0838))
        );

        // More specific network wins regardless of insertion order; the rest of the /16 keeps
        // the broader record.
        assert_eq!(
            city_name(&lookup(&bytes, "81.2.69.142").unwrap()),
            Some("London")
        );
        let broad = lookup(&bytes, "81.2.1.1").unwrap();
        assert_eq!(broad.country.unwrap().iso_code, Some("GB"));
        assert!(broad.city.is_none());

        assert_eq!(
            city_name(&lookup(&bytes, "2001:4860:4860::8888").unwrap()),
            Some("Ashburn")
        );
        assert_eq!(
            city_name(&lookup(&bytes, "1.1.1.1").unwrap()),
            Some("Sydney ünï")
        );
        // IPv4-mapped form reaches the IPv4 subtree through the alias.
        assert_eq!(
            city_name(&lookup(&bytes, "::ffff:8.8.8.8").unwrap()),
            Some("Mountain View")
        );

        for miss in [
            "8.8.9.1",
            "1.1.1.2",
            "10.0.0.1",
            "2001:4861::1",
            "::1",
            "255.255.255.255",
        ] {
            assert!(lookup(&bytes, miss).is_none(), "{miss}");
        }
    }

    #[test]
    fn all_record_sizes_are_readable() {
        for bits in [24u16, 28, 32] {
            let bytes = sample().record_size(bits).to_bytes().unwrap();
            let reader = Reader::from_source(bytes.clone()).unwrap();
            assert_eq!(reader.metadata.record_size, bits);
            assert_eq!(
                city_name(&lookup(&bytes, "81.2.69.1").unwrap()),
                Some("London")
            );
            assert_eq!(
                city_name(&lookup(&bytes, "2001:4860::1").unwrap()),
                Some("Ashburn")
            );
            assert!(lookup(&bytes, "9.9.9.9").is_none());
        }
        assert!(sample().record_size(20).to_bytes().is_err());
    }

    #[test]
    fn large_strings_use_extended_sizes() {
        // Exercise the 1-, 2- and 3-byte size extensions.
        for n in [29usize, 284, 285, 65_820, 65_821, 70_000] {
            let name = "x".repeat(n);
            let mut w = MmdbWriter::new();
            w.insert(
                "5.5.5.5/32",
                CityRecord {
                    city: Some(name.clone()),
                    ..Default::default()
                },
            )
            .unwrap();
            let bytes = w.to_bytes().unwrap();
            assert_eq!(
                city_name(&lookup(&bytes, "5.5.5.5").unwrap()).map(str::len),
                Some(n)
            );
        }
    }

    #[test]
    fn write_to_file_and_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.mmdb");
        MmdbWriter::new()
            .insert(
                "8.8.8.0/24",
                CityRecord {
                    country_code: Some("US".into()),
                    ..Default::default()
                },
            )
            .unwrap()
            .write_to(&path)
            .unwrap();
        let reader = Reader::open_readfile(&path).unwrap();
        let c: geoip2::City = reader.lookup("8.8.8.8".parse().unwrap()).unwrap();
        assert_eq!(c.country.unwrap().iso_code, Some("US"));

        let mut w = MmdbWriter::new();
        assert!(w.insert("1.2.3.0/33", CityRecord::default()).is_err());
        assert!(w.insert("::/0", CityRecord::default()).is_err());
        assert!(w.insert("nonsense/8", CityRecord::default()).is_err());
        assert!(w.insert("1.2.3.0/x", CityRecord::default()).is_err());
        // Empty database is still a valid file.
        let empty = MmdbWriter::new().to_bytes().unwrap();
        assert!(lookup(&empty, "8.8.8.8").is_none());
    }
}
