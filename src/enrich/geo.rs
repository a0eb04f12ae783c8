//! Geolocation from a MaxMind City (or Country) database.

use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::ConfigError;
use crate::event::Location;

const SETTING: &str = "enrich.geoip_db";

/// An opened database. The file is read into memory once; lookups are read-only, so one
/// instance serves all threads.
pub struct GeoDb {
    reader: maxminddb::Reader<Vec<u8>>,
}

impl fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoDb")
            .field("database_type", &self.reader.metadata.database_type)
            .finish()
    }
}

// Only the fields we keep, with names borrowed from the database: `geoip2::City` would build a
// map of every language's names per lookup.
#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(borrow)]
    country: Option<Place<'a>>,
    #[serde(borrow)]
    subdivisions: Option<First<Place<'a>>>,
    #[serde(borrow)]
    city: Option<Place<'a>>,
    location: Option<Coordinates>,
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
    /// Opens and sanity-checks the database. Failures name the setting and the path.
    pub fn open(path: &Path) -> Result<GeoDb, ConfigError> {
        let shown = path.display();
        let reader = maxminddb::Reader::open_readfile(path)
            .map_err(|e| ConfigError::new(SETTING, format!("cannot open {shown}: {e}")))?;
        let kind = reader.metadata.database_type.to_ascii_lowercase();
        if !kind.contains("city") && !kind.contains("country") {
            return Err(ConfigError::new(
                SETTING,
                format!(
                    "{shown} is a {:?} database; a City or Country database is needed",
                    reader.metadata.database_type
                ),
            ));
        }
        let db = GeoDb { reader };
        // The reader indexes the file without bounds checks in places; probe it now so a
        // damaged file fails at start rather than on some event later.
        for probe in ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "81.2.69.142"] {
            if let Some(ip) = probe.parse::<IpAddr>().ok().filter(|ip| db.covers(*ip)) {
                let r = catch_unwind(AssertUnwindSafe(|| {
                    db.reader.lookup::<CityRecord>(ip).map(|_| ())
                }));
                match r {
                    Err(_) => {
                        return Err(ConfigError::new(SETTING, format!("{shown} is corrupt")));
                    }
                    Ok(Err(maxminddb::MaxMindDBError::AddressNotFoundError(_))) | Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        return Err(ConfigError::new(
                            SETTING,
                            format!("{shown} is unreadable: {e}"),
                        ));
                    }
                }
            }
        }
        Ok(db)
    }

    /// An IPv4-only database would walk an IPv6 address's bits as if they were IPv4 ones and
    /// could return an unrelated record.
    fn covers(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() || self.reader.metadata.ip_version == 6
    }

    /// The location of `ip`, or `None` when the database has nothing (or nothing useful) for it.
    pub fn lookup(&self, ip: IpAddr) -> Option<Location> {
        if !self.covers(ip) {
            return None;
        }
        // A damaged record must cost one event its location, not the process.
        let rec = catch_unwind(AssertUnwindSafe(|| self.reader.lookup::<CityRecord>(ip)));
        let rec = match rec {
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
        let loc = Location {
            country_code: owned(rec.country.as_ref().and_then(|c| c.iso_code)),
            country: owned(rec.country.as_ref().and_then(|c| c.names.as_ref()?.en)),
            region: owned(subdivision.as_ref().and_then(|s| s.names.as_ref()?.en)),
            city: owned(rec.city.as_ref().and_then(|c| c.names.as_ref()?.en)),
            latitude: rec
                .location
                .as_ref()
                .and_then(|l| l.latitude)
                .filter(|v| v.is_finite()),
            longitude: rec
                .location
                .as_ref()
                .and_then(|l| l.longitude)
                .filter(|v| v.is_finite()),
        };
        (!loc.is_empty()).then_some(loc)
    }
}
