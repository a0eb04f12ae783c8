//! Redaction of secrets before anything reaches a log line or an error message: the one place
//! that knows what a secret looks like in a connection URL or a librdkafka property.

/// What a redacted value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Query parameters of a connection URL whose value is a secret (compared case-insensitively;
/// `password` also covers `sslpassword`, `secret` covers `client_secret`, …).
const SECRET_QUERY_WORDS: &[&str] = &["password", "passwd", "pwd", "secret", "token", "passphrase", "key"];

/// A connection URL with its secrets replaced: the password of `user:password@` and the value of
/// secret query parameters (`?password=…`, `sslpassword=…`, `sslkey=…`). Host, port, database
/// and the other parameters stay, so the line is still useful.
///
/// `postgres://u:pw@h:5432/db?sslmode=require&password=x` →
/// `postgres://u:<redacted>@h:5432/db?sslmode=require&password=<redacted>`.
pub fn url(url: &str) -> String {
    let (base, fragment) = match url.find('#') {
        Some(i) => (&url[..i], Some(&url[i + 1..])),
        None => (url, None),
    };
    let (head, query) = match base.find('?') {
        Some(i) => (&base[..i], Some(&base[i + 1..])),
        None => (base, None),
    };
    let mut out = userinfo(head);
    if let Some(q) = query {
        out.push('?');
        out.push_str(&redact_query(q));
    }
    if fragment.is_some() {
        // A fragment is never needed to tell one server from another, and may carry a token.
        out.push('#');
        out.push_str(REDACTED);
    }
    out
}

/// `scheme://user:pw@rest` → `scheme://user:<redacted>@rest`; a URL without a password as is.
fn userinfo(head: &str) -> String {
    let Some(scheme_end) = head.find("://") else { return head.to_string() };
    let authority_start = scheme_end + 3;
    let rest = &head[authority_start..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    // The last `@` ends the userinfo: a password may itself contain an unescaped `@`.
    let Some(at) = authority.rfind('@') else { return head.to_string() };
    let info = &authority[..at];
    match info.find(':') {
        Some(colon) => format!("{}{}:{REDACTED}{}", &head[..authority_start], &info[..colon], &rest[at..]),
        None => head.to_string(),
    }
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_query_name(name) => format!("{name}={REDACTED}"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_secret_query_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    // `sslkey` names a key file, `sslrootcert` a certificate: only the former is private.
    SECRET_QUERY_WORDS.iter().any(|w| n.contains(w)) && !n.ends_with("cert")
}

/// Host (and port) of a connection URL, without user, password, path or query: what a start-up
/// line shows of a server. `None` when the text has no `scheme://host`.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority.rfind('@').map_or(authority, |at| &authority[at + 1..]);
    (!host.is_empty()).then_some(host)
}

/// The path of a connection URL without its leading `/` (for PostgreSQL the database, for
/// Redis the database number). `None` when there is none.
pub fn url_path(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let rest = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    let path = rest.find('/').map(|i| &rest[i + 1..])?;
    (!path.is_empty()).then_some(path)
}

/// librdkafka properties whose values must never be logged: passwords, key passphrases,
/// inline private keys, OAuth client secrets and token configurations.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase();
    n.contains("password")
        || n.contains("passphrase")
        || n.contains("secret")
        || n.ends_with(".key.pem")
        || n.ends_with("key.pem")
        || n == "ssl.key"
        || n.starts_with("sasl.oauthbearer.config")
        || n.ends_with(".jaas.config")
        || n.contains("private.key")
}

/// The value of a librdkafka property as it may be printed.
pub fn property<'a>(name: &str, value: &'a str) -> &'a str {
    if is_secret_property(name) {
        REDACTED
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_of_user_info_is_redacted() {
        assert_eq!(url("postgres://u:pw@h:5432/db"), "postgres://u:<redacted>@h:5432/db");
        assert_eq!(url("redis://:redis-pw@cache:6379/0"), "redis://:<redacted>@cache:6379/0");
        assert_eq!(url("rediss://default:p%40ss@cache/1"), "rediss://default:<redacted>@cache/1");
        // An unescaped `@` in the password: the last `@` of the authority ends the userinfo.
        assert_eq!(url("postgres://u:p@ss@h/db"), "postgres://u:<redacted>@h/db");
        // A user without a password has nothing to hide.
        assert_eq!(url("postgres://auditflow@h/db"), "postgres://auditflow@h/db");
        assert_eq!(url("postgres://h/db"), "postgres://h/db");
        // An `@` in the path is not userinfo.
        assert_eq!(url("postgres://h/db@x"), "postgres://h/db@x");
        assert_eq!(url("not a url"), "not a url");
    }

    #[test]
    fn secret_query_parameters_are_redacted_and_others_kept() {
        assert_eq!(
            url("postgres://h/db?sslmode=require&password=hunter2"),
            "postgres://h/db?sslmode=require&password=<redacted>"
        );
        assert_eq!(url("postgres://h/db?PASSWORD=x&user=u"), "postgres://h/db?PASSWORD=<redacted>&user=u");
        assert_eq!(
            url("postgresql://u:a@h/db?sslpassword=k&sslkey=/k.pem&sslrootcert=/ca.pem"),
            "postgresql://u:<redacted>@h/db?sslpassword=<redacted>&sslkey=<redacted>&sslrootcert=/ca.pem"
        );
        assert_eq!(url("https://h/hook?token=abc#frag"), "https://h/hook?token=<redacted>#<redacted>");
    }

    #[test]
    fn hosts_and_paths_carry_no_secret() {
        assert_eq!(url_host("postgres://u:pw@db.internal:5432/auditflow?password=x"), Some("db.internal:5432"));
        assert_eq!(url_host("redis://:pw@cache:6379/0"), Some("cache:6379"));
        assert_eq!(url_host("redis://cache"), Some("cache"));
        assert_eq!(url_host("cache:6379"), None);
        assert_eq!(url_path("postgres://u:pw@h:5432/auditflow?sslmode=require"), Some("auditflow"));
        assert_eq!(url_path("redis://h:6379/0"), Some("0"));
        assert_eq!(url_path("redis://h:6379"), None);
    }

    #[test]
    fn secret_librdkafka_properties_are_recognised() {
        for name in [
            "sasl.password",
            "SASL.PASSWORD",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.truststore.password",
            "ssl.key.pem",
            "ssl_key.pem",
            "ssl.key.passphrase",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "sasl.jaas.config",
        ] {
            assert!(is_secret_property(name), "{name}");
            assert_eq!(property(name, "s3cr3t"), REDACTED, "{name}");
        }
        for name in ["security.protocol", "sasl.username", "sasl.mechanism", "ssl.ca.location", "ssl.certificate.pem"] {
            assert!(!is_secret_property(name), "{name}");
            assert_eq!(property(name, "visible"), "visible", "{name}");
        }
    }
}
