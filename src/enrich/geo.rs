//! Geolocation from MaxMind-format City (or Country) databases: MaxMind's own layout
//! (`country.iso_code`, `city.names.en`, `location.latitude`, …) or the flat one of
//! ip-location-db (`country_code`, `state1`, `city`, `latitude`, …), one file or a directory of
//! them (ip-location-db ships IPv4 and IPv6 as two files).

use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::ConfigError;
use crate::event::Location;

const SETTING: &str = "enrich.geoip_db";

/// Opened databases. Each file is read into memory once; lookups are read-only, so one instance
/// serves all threads.
pub struct GeoDb {
    /// IPv4-only databases first: they answer IPv4 addresses before an IPv6 one would.
    readers: Vec<maxminddb::Reader<Vec<u8>>>,
    built: Option<DateTime<Utc>>,
}

impl fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<&str> = self.readers.iter().map(|r| r.metadata.database_type.as_str()).collect();
        f.debug_struct("GeoDb").field("database_types", &kinds).field("built", &self.built).finish()
    }
}

/// The `.mmdb` files `path` names: itself, or those of a directory (sorted).
pub(crate) fn mmdb_files(path: &Path, setting: &'static str) -> Result<Vec<PathBuf>, ConfigError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| ConfigError::new(setting, format!("cannot read {}: {e}", path.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "mmdb"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ConfigError::new(setting, format!("no .mmdb file in {}", path.display())));
    }
    Ok(files)
}

/// When a database was built (its metadata's `build_epoch`).
pub(crate) fn built_at(r: &maxminddb::Reader<Vec<u8>>) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(i64::try_from(r.metadata.build_epoch).ok()?, 0)
}

// Only the fields we keep, borrowed from the database: `geoip2::City` would build a map of every
// language's names per lookup. Both layouts are read by the one record type.
#[derive(Deserialize)]
struct CityRecord<'a> {
    // MaxMind's layout
    #[serde(borrow)]
    country: Option<Place<'a>>,
    #[serde(borrow)]
    subdivisions: Option<First<Place<'a>>>,
    location: Option<Coordinates>,
    // both: a map with names (MaxMind) or a plain string (ip-location-db)
    #[serde(borrow)]
    city: Option<Name<'a>>,
    // ip-location-db's flat layout
    #[serde(borrow)]
    country_code: Option<&'a str>,
    #[serde(borrow)]
    state1: Option<&'a str>,
    latitude: Option<f64>,
    longitude: Option<f64>,
}

#[derive(Deserialize)]
struct Place<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
    #[serde(borrow)]
    names: Option<EnglishName<'a>>,
}

#[derive(Deserialize)]
struct EnglishName<'a> {
    #[serde(borrow)]
    en: Option<&'a str>,
}

#[derive(Deserialize)]
struct Coordinates {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

/// A name given as a string, or as a map whose `names.en` holds it.
struct Name<'a>(Option<&'a str>);

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name, or a map with names")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Some(s)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Name<'de>, A::Error> {
                let mut out = None;
                while let Some(k) = m.next_key::<&str>()? {
                    if k == "names" {
                        out = m.next_value::<EnglishName>()?.en;
                    } else {
                        m.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Name(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// The first element of an array, skipping the rest without collecting them.
struct First<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for First<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = First<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<First<T>, A::Error> {
                let first = seq.next_element::<T>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(First(first))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

fn owned(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(str::to_owned)
}

impl GeoDb {
    /// Opens and sanity-checks the database file, or every `.mmdb` file of a directory.
    /// Failures name the setting and the path.
    pub fn open(path: &Path) -> Result<GeoDb, ConfigError> {
        let mut readers = Vec::new();
        for file in mmdb_files(path, SETTING)? {
            readers.push(open_one(&file)?);
        }
        readers.sort_by_key(|r| r.metadata.ip_version);
        let built = readers.iter().filter_map(built_at).min();
        Ok(GeoDb { readers, built })
    }

    /// When the (oldest) database was built.
    pub fn built(&self) -> Option<DateTime<Utc>> {
        self.built
    }

    /// The location of `ip`, or `None` when no database has anything (useful) for it.
    pub fn lookup(&self, ip: IpAddr) -> Option<Location> {
        self.readers.iter().filter(|r| covers(r, ip)).find_map(|r| lookup_one(r, ip))
    }
}

fn open_one(path: &Path) -> Result<maxminddb::Reader<Vec<u8>>, ConfigError> {
    let shown = path.display();
    let reader = maxminddb::Reader::open_readfile(path).map_err(|e| ConfigError::new(SETTING, format!("cannot open {shown}: {e}")))?;
    let kind = reader.metadata.database_type.to_ascii_lowercase();
    if !kind.contains("city") && !kind.contains("country") {
        return Err(ConfigError::new(
            SETTING,
            format!("{shown} is a {:?} database; a City or Country database is needed", reader.metadata.database_type),
        ));
    }
    // The reader indexes the file without bounds checks in places; probe it now so a damaged
    // file fails at start rather than on some event later.
    for probe in ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "81.2.69.142"] {
        if let Some(ip) = probe.parse::<IpAddr>().ok().filter(|ip| covers(&reader, *ip)) {
            match catch_unwind(AssertUnwindSafe(|| reader.lookup::<CityRecord>(ip).map(|_| ()))) {
                Err(_) => return Err(ConfigError::new(SETTING, format!("{shown} is corrupt"))),
                Ok(Err(maxminddb::MaxMindDBError::AddressNotFoundError(_))) | Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(ConfigError::new(SETTING, format!("{shown} is unreadable: {e}"))),
            }
        }
    }
    Ok(reader)
}

/// An IPv4-only database would walk an IPv6 address's bits as if they were IPv4 ones and could
/// return an unrelated record.
pub(crate) fn covers(r: &maxminddb::Reader<Vec<u8>>, ip: IpAddr) -> bool {
    ip.is_ipv4() || r.metadata.ip_version == 6
}

fn lookup_one(reader: &maxminddb::Reader<Vec<u8>>, ip: IpAddr) -> Option<Location> {
    // A damaged record must cost one event its location, not the process.
    let rec = match catch_unwind(AssertUnwindSafe(|| reader.lookup::<CityRecord>(ip))) {
        Ok(Ok(rec)) => rec,
        Ok(Err(maxminddb::MaxMindDBError::AddressNotFoundError(_))) => return None,
        Ok(Err(e)) => {
            tracing::debug!(%ip, error = %e, "geoip lookup failed");
            return None;
        }
        Err(_) => {
            tracing::warn!(%ip, "geoip lookup panicked; database damaged?");
            return None;
        }
    };
    let subdivision = rec.subdivisions.and_then(|s| s.0);
    let finite = |v: Option<f64>| v.filter(|v| v.is_finite());
    let loc = Location {
        country_code: owned(rec.country_code.or(rec.country.as_ref().and_then(|c| c.iso_code))),
        country: owned(rec.country.as_ref().and_then(|c| c.names.as_ref()?.en)),
        region: owned(rec.state1.or(subdivision.as_ref().and_then(|s| s.names.as_ref()?.en))),
        city: owned(rec.city.as_ref().and_then(|c| c.0)),
        latitude: finite(rec.latitude.or(rec.location.as_ref().and_then(|l| l.latitude))),
        longitude: finite(rec.longitude.or(rec.location.as_ref().and_then(|l| l.longitude))),
    };
    (!loc.is_empty()).then_some(loc)
}
