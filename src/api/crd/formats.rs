//! The string `format`s a CRD schema may check, as the apiextensions apiserver
//! validates them (its supported set at compatibility version 1.0, each judged as
//! go-openapi's `strfmt` registry judges it). Other formats (`int32`, `int64`,
//! `float`, `double`, anything unknown) are not checked, as upstream strips them.

use std::net::IpAddr;
use std::sync::LazyLock;

use base64::Engine;
use regex::Regex;

/// Whether `v` is a valid `format` value; `None` when rk (like Kubernetes) does not
/// check that format.
pub fn check(format: &str, v: &str) -> Option<bool> {
    // go-openapi normalises format names by dropping dashes: `date-time` = `datetime`.
    let f = format.replace('-', "");
    Some(match f.as_str() {
        "bsonobjectid" => v.len() == 24 && v.bytes().all(|b| b.is_ascii_hexdigit()),
        "uri" => uri(v),
        "email" => email(v),
        "hostname" => hostname(v),
        "ipv4" => v.parse::<IpAddr>().is_ok() && v.contains('.'),
        "ipv6" => v.parse::<IpAddr>().is_ok() && v.contains(':'),
        "cidr" => v.parse::<ipnet::IpNet>().is_ok(),
        "mac" => mac(v),
        "uuid" => re(&UUID, v),
        "uuid3" => re(&UUID3, v),
        "uuid4" => re(&UUID4, v),
        "uuid5" => re(&UUID5, v),
        "isbn" => isbn10(v) || isbn13(v),
        "isbn10" => isbn10(v),
        "isbn13" => isbn13(v),
        "creditcard" => credit_card(v),
        "ssn" => re(&SSN, v),
        "hexcolor" => re(&HEX_COLOR, v),
        "rgbcolor" => re(&RGB_COLOR, v),
        "byte" => base64::engine::general_purpose::STANDARD.decode(v).is_ok(),
        "password" => true,
        "date" => chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").is_ok() && v.len() == 10,
        "duration" => duration(v),
        "datetime" => date_time(v),
        _ => return None,
    })
}

fn re(r: &Regex, v: &str) -> bool {
    r.is_match(v)
}

macro_rules! regex {
    ($name:ident, $re:expr) => {
        static $name: LazyLock<Regex> = LazyLock::new(|| Regex::new($re).expect("a valid regex"));
    };
}

regex!(UUID, r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$");
regex!(UUID3, r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?3[0-9a-f]{3}-?[0-9a-f]{4}-?[0-9a-f]{12}$");
regex!(UUID4, r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?4[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$");
regex!(UUID5, r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?5[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$");
regex!(SSN, r"^\d{3}[- ]?\d{2}[- ]?\d{4}$");
regex!(HEX_COLOR, r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$");
regex!(
    RGB_COLOR,
    r"^rgb\(\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*\)$"
);
regex!(
    CREDIT_CARD,
    r"^(?:4[0-9]{12}(?:[0-9]{3})?|5[1-5][0-9]{14}|(222[1-9]|22[3-9][0-9]|2[3-6][0-9]{2}|27[01][0-9]|2720)[0-9]{12}|6(?:011|5[0-9][0-9])[0-9]{12}|3[47][0-9]{13}|3(?:0[0-5]|[68][0-9])[0-9]{11}|(?:2131|1800|35\d{3})\d{11}|6[27][0-9]{14})$"
);
regex!(GO_DURATION, r"^[-+]?(\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))*$");
regex!(
    LONG_DURATION,
    r"^\s*(\d+\s*(ns|nanos?|nanoseconds?|us|µs|micros?|microseconds?|ms|millis?|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?|d|days?|w|wks?|weeks?)\s*)+$"
);

/// Go's `url.ParseRequestURI`: an absolute URI (`scheme:…`) or an absolute path,
/// without spaces or control characters.
fn uri(v: &str) -> bool {
    if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    if v.starts_with('/') {
        return true;
    }
    let Some((scheme, rest)) = v.split_once(':') else { return false };
    let mut cs = scheme.chars();
    cs.next().is_some_and(|c| c.is_ascii_alphabetic())
        && cs.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
}

/// Go's `mail.ParseAddress`, in its common forms: `local@domain` or
/// `Name <local@domain>`.
fn email(v: &str) -> bool {
    let addr = match (v.rfind('<'), v.strip_suffix('>')) {
        (Some(i), Some(_)) => &v[i + 1..v.len() - 1],
        _ => v.trim(),
    };
    let Some((local, domain)) = addr.rsplit_once('@') else { return false };
    let atom = |s: &str| {
        !s.is_empty()
            && s.split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)))
    };
    atom(local) && atom(domain)
}

/// RFC 1034 host names, as strfmt's `hostname`: labels of letters, digits and
/// hyphens (not at either end) of up to 63 characters, up to 255 in all.
fn hostname(v: &str) -> bool {
    let v = v.strip_suffix('.').unwrap_or(v);
    !v.is_empty()
        && v.len() <= 255
        && v.split('.').all(|l| {
            !l.is_empty()
                && l.chars().count() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

/// Go's `net.ParseMAC`: 6, 8 or 20 octets split by `:` or `-`, or groups of four
/// hex digits split by `.`.
fn mac(v: &str) -> bool {
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    let ok_len = |n: usize| matches!(n, 6 | 8 | 20);
    for sep in [':', '-'] {
        let parts: Vec<&str> = v.split(sep).collect();
        if parts.len() > 1 {
            return ok_len(parts.len()) && parts.iter().all(|p| hex(p, 2));
        }
    }
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() > 1 && ok_len(parts.len() * 2) && parts.iter().all(|p| hex(p, 4))
}

fn digits_of(v: &str) -> String {
    v.chars().filter(|c| *c != '-' && *c != ' ').collect()
}

fn isbn10(v: &str) -> bool {
    let d = digits_of(v);
    let b = d.as_bytes();
    if b.len() != 10 || !b[..9].iter().all(u8::is_ascii_digit) || !(b[9].is_ascii_digit() || b[9] == b'X') {
        return false;
    }
    let sum: u32 =
        b.iter().enumerate().map(|(i, c)| (i as u32 + 1) * if *c == b'X' { 10 } else { (c - b'0') as u32 }).sum();
    sum.is_multiple_of(11)
}

fn isbn13(v: &str) -> bool {
    let d = digits_of(v);
    let b = d.as_bytes();
    if b.len() != 13 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = b[..12].iter().enumerate().map(|(i, c)| (c - b'0') as u32 * if i % 2 == 0 { 1 } else { 3 }).sum();
    (10 - sum % 10) % 10 == (b[12] - b'0') as u32
}

/// A card number (any non-digits dropped) of a known issuer's shape that passes
/// the Luhn check.
fn credit_card(v: &str) -> bool {
    let d: String = v.chars().filter(char::is_ascii_digit).collect();
    if !CREDIT_CARD.is_match(&d) {
        return false;
    }
    let mut sum = 0;
    for (i, c) in d.bytes().rev().enumerate() {
        let mut n = (c - b'0') as u32;
        if i % 2 == 1 {
            n *= 2;
            if n > 9 {
                n -= 9;
            }
        }
        sum += n;
    }
    sum.is_multiple_of(10)
}

/// strfmt's `duration`: Go's `time.ParseDuration` form (`1h30m`, `300ms`) or
/// numbers with long unit names (`22 ns`, `3 days`).
fn duration(v: &str) -> bool {
    v == "0" || GO_DURATION.is_match(v) || LONG_DURATION.is_match(v)
}

/// strfmt's `date-time`: RFC 3339, with or without fractional seconds, a `Z` or
/// an offset (also without its colon), or no zone at all.
fn date_time(v: &str) -> bool {
    if chrono::DateTime::parse_from_rfc3339(v).is_ok() {
        return true;
    }
    ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%z"].iter().any(|f| chrono::DateTime::parse_from_str(v, f).is_ok())
        || chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f").is_ok()
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn formats_as_kubernetes_checks_them() {
        let good = [
            ("email", "ops@example.com"),
            ("email", "Ops Team <ops@example.com>"),
            ("hostname", "db-1.example.com"),
            ("ipv4", "10.0.0.1"),
            ("ipv6", "fd00::1"),
            ("cidr", "10.42.0.0/16"),
            ("mac", "02:42:ac:11:00:02"),
            ("mac", "0242.ac11.0002"),
            ("uuid", "6BA7B810-9DAD-11D1-80B4-00C04FD430C8"),
            ("uuid4", "3e4666bf-d5e5-4aa7-b8ce-cefe41c7568a"),
            ("date", "2026-12-01"),
            ("date-time", "2026-12-01T10:00:00Z"),
            ("date-time", "2026-12-01T10:00:00.123+01:00"),
            ("duration", "1h30m"),
            ("duration", "22 ns"),
            ("byte", "aGVsbG8="),
            ("uri", "https://example.com/x?y=1"),
            ("uri", "/just/a/path"),
            ("bsonobjectid", "507f1f77bcf86cd799439011"),
            ("isbn10", "0321751043"),
            ("isbn13", "978-0321751041"),
            ("creditcard", "4111 1111 1111 1111"),
            ("ssn", "123-45-6789"),
            ("hexcolor", "#fff"),
            ("rgbcolor", "rgb(255, 0, 12)"),
            ("password", "anything at all"),
        ];
        for (f, v) in good {
            assert_eq!(check(f, v), Some(true), "{f} {v:?}");
        }
        let bad = [
            ("email", "not-an-email"),
            ("hostname", "-bad-.example.com"),
            ("ipv4", "fd00::1"),
            ("ipv4", "300.1.1.1"),
            ("ipv6", "10.0.0.1"),
            ("cidr", "10.42.0.0"),
            ("mac", "02:42:ac:11:00"),
            ("uuid", "not-a-uuid"),
            ("uuid4", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
            ("date", "2026-13-01"),
            ("date-time", "yesterday"),
            ("duration", "soon"),
            ("byte", "not base64!"),
            ("uri", "no scheme here"),
            ("isbn10", "0321751044"),
            ("creditcard", "4111 1111 1111 1112"),
            ("hexcolor", "#ggg"),
            ("rgbcolor", "rgb(256,0,0)"),
        ];
        for (f, v) in bad {
            assert_eq!(check(f, v), Some(false), "{f} {v:?}");
        }
        assert_eq!(check("int32", "x"), None);
        assert_eq!(check("k8s-short-name", "x"), None);
    }
}
