//! Hides the secrets of connection URLs (`scheme://user:password@host`, and `password=...`
//! as a URL's query parameter or a libpq `key=value` setting) wherever a URL, or an error
//! that may quote one, is printed or stored: logs, `/health`, start-up errors, `Debug`.
//!
//! Scheme-agnostic on purpose: the same function serves `nats://` and `postgres://` URLs, and
//! free text that merely contains them (a driver's error message). What stays is what an
//! operator needs: the scheme, the user name, the host and port, the path, the cause.

use std::borrow::Cow;

/// What replaces a password or token.
pub const MASK: &str = "***";

/// `text` with the userinfo of every `scheme://userinfo@host` in it masked:
/// `user:password` becomes `user:***`, a lone `token` (NATS's `nats://token@host`) becomes
/// `***`; and the value of every secret setting (`password=`, `sslpassword=`, `token=`...,
/// see [`SECRET_KEYS`]) masked, as PostgreSQL takes them in a URL's query
/// (`postgres://h/db?password=...`) or in a `key=value` connection string. Text without
/// credentials comes back borrowed, unchanged.
///
/// A password may hold characters that should have been percent-encoded (`/`, `?`, `#`, `@`),
/// so the userinfo ends at the last `@` before the host. When that is ambiguous (an `@` both
/// inside the password and after a later `/`) more is masked rather than less: a leaked host
/// name is better than a leaked password. Idempotent: masked text is masked text.
pub fn redact(text: &str) -> Cow<'_, str> {
    match redact_userinfo(text) {
        Cow::Borrowed(t) => redact_settings(t),
        Cow::Owned(s) => {
            if let Cow::Owned(o) = redact_settings(&s) {
                return Cow::Owned(o);
            }
            Cow::Owned(s)
        }
    }
}

/// Setting names whose values are secrets (compared without case).
pub const SECRET_KEYS: [&str; 6] = [
    "password",
    "sslpassword",
    "passwd",
    "pass",
    "token",
    "secret",
];

/// The values of [`SECRET_KEYS`] settings masked: `key=value` where the key starts the text
/// or follows a separator of a query (`?`, `&`, `;`) or of a `key=value` string (whitespace).
/// A value ends at whitespace, `&` or a quote; a libpq value in single quotes ends at its
/// closing quote.
fn redact_settings(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let (mut copied, mut from) = (0, 0);
    while let Some(found) = text[from..].find('=') {
        let eq = from + found;
        from = eq + 1;
        let key_start = text[..eq]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let key = &text[key_start..eq];
        let separated = key_start == 0
            || matches!(
                bytes[key_start - 1],
                b'?' | b'&' | b';' | b'"' | b'\'' | b'('
            )
            || bytes[key_start - 1].is_ascii_whitespace();
        if !separated || !SECRET_KEYS.iter().any(|k| key.eq_ignore_ascii_case(k)) {
            continue;
        }
        let start = eq + 1;
        let rest = &text[start..];
        let len = if let Some(quoted) = rest.strip_prefix('\'') {
            // libpq: `\'` and `\\` escape inside quotes.
            let mut escaped = false;
            quoted
                .char_indices()
                .find(|&(_, c)| {
                    let close = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    close
                })
                .map_or(rest.len(), |(i, _)| i + 2)
        } else {
            rest.find(|c: char| c.is_whitespace() || matches!(c, '&' | '"' | '\'' | '`'))
                .unwrap_or(rest.len())
        };
        if len == 0 || &rest[..len] == MASK {
            continue;
        }
        out.push_str(&text[copied..start]);
        out.push_str(MASK);
        copied = start + len;
        from = copied;
    }
    if copied == 0 {
        Cow::Borrowed(text)
    } else {
        out.push_str(&text[copied..]);
        Cow::Owned(out)
    }
}

/// [`redact`]'s first half: the userinfo of every `scheme://userinfo@host`.
fn redact_userinfo(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    // `copied`: how much of `text` is already in `out`; `from`: where to look for `://`.
    let (mut copied, mut from) = (0, 0);
    while let Some(found) = text[from..].find("://") {
        let start = from + found + 3;
        let end = authority_end(text, start);
        from = end.max(start);
        let Some(at) = userinfo_end(&text[start..end]) else {
            continue;
        };
        let userinfo = &text[start..start + at];
        if userinfo.is_empty() {
            continue;
        }
        let masked = match userinfo.find(':') {
            Some(colon) => format!("{}:{MASK}", &userinfo[..colon]),
            None => MASK.to_owned(),
        };
        if masked == userinfo {
            continue;
        }
        out.push_str(&text[copied..start]);
        out.push_str(&masked);
        copied = start + at;
    }
    if copied == 0 {
        Cow::Borrowed(text)
    } else {
        out.push_str(&text[copied..]);
        Cow::Owned(out)
    }
}

/// [`redact`] for a configured address (a URL, or a comma-separated list of them) whose
/// scheme may be left out, as NATS clients allow (`user:password@host:4222`): there the
/// userinfo starts the item. For free text use [`redact`], which needs the `://`.
pub fn redact_url(urls: &str) -> Cow<'_, str> {
    if !urls
        .split(',')
        .any(|u| !u.contains("://") && u.contains('@'))
    {
        return redact(urls);
    }
    let items: Vec<String> = urls
        .split(',')
        .map(|u| {
            if u.contains("://") {
                return redact(u).into_owned();
            }
            match userinfo_end(u) {
                Some(at) if at > 0 => {
                    let masked = match u[..at].find(':') {
                        Some(colon) => format!("{}:{MASK}", &u[..colon]),
                        None => MASK.to_owned(),
                    };
                    format!("{masked}{}", &u[at..])
                }
                _ => u.to_owned(),
            }
        })
        .collect();
    Cow::Owned(redact_settings(&items.join(",")).into_owned())
}

/// Where the part of a URL that can hold credentials ends: at whitespace, a quote or bracket
/// that closes the URL in a message, or the next URL of a list (`a://..,b://..`).
fn authority_end(text: &str, start: usize) -> usize {
    let rest = &text[start..];
    let mut end = rest
        .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
        .unwrap_or(rest.len());
    if let Some(next) = rest[..end].find("://") {
        // Back over the next URL's scheme; its userinfo is handled on its own.
        let scheme = rest[..next]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        end = scheme;
    }
    start + end
}

/// The `@` that ends the userinfo in `segment` (what follows `://`), if there is one: the
/// last `@` before any `/`, `?` or `#`; failing that (a password holding one of those), the
/// last `@` of all.
fn userinfo_end(segment: &str) -> Option<usize> {
    let head = segment.find(['/', '?', '#']).unwrap_or(segment.len());
    segment[..head].rfind('@').or_else(|| segment.rfind('@'))
}

/// Splits the credentials off a URL (or a comma-separated list of URLs) for a client that
/// takes them apart from the address: the list without any userinfo, and the first userinfo
/// found, percent-decoded, as `(user, Some(password))` or `(token, None)`.
pub fn split_credentials(urls: &str) -> (String, Option<(String, Option<String>)>) {
    let mut bare = String::with_capacity(urls.len());
    let mut creds = None;
    for (i, url) in urls.split(',').enumerate() {
        if i > 0 {
            bare.push(',');
        }
        let start = url.find("://").map_or(0, |i| i + 3);
        match userinfo_end(&url[start..]) {
            Some(at) => {
                let userinfo = &url[start..start + at];
                if creds.is_none() {
                    creds = Some(match userinfo.split_once(':') {
                        Some((user, pass)) => (decode(user), Some(decode(pass))),
                        None => (decode(userinfo), None),
                    });
                }
                bare.push_str(&url[..start]);
                bare.push_str(&url[start + at + 1..]);
            }
            None => bare.push_str(url),
        }
    }
    (bare, creds)
}

/// Percent-decoding of a userinfo part (`p%40ss` is `p@ss`); invalid escapes stay as written.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|&b| (b as char).to_digit(16));
        if let (b'%', Some(high), Some(low)) = (bytes[i], hex(i + 1), hex(i + 2)) {
            out.push((high * 16 + low) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_are_masked_and_the_rest_stays() {
        let cases = [
            ("nats://user:s3cret@host:4222", "nats://user:***@host:4222"),
            ("nats://s3cret@host", "nats://***@host"),
            ("nats://:s3cret@host", "nats://:***@host"),
            (
                "postgres://app:s3cret@db.internal:5432/jobs?sslmode=require",
                "postgres://app:***@db.internal:5432/jobs?sslmode=require",
            ),
            (
                "cannot connect to NATS at nats://u:s3cret@127.0.0.1:4222: connection refused",
                "cannot connect to NATS at nats://u:***@127.0.0.1:4222: connection refused",
            ),
            (
                "nats://a:s3cret@h1:4222,nats://b:s3cret@h2:4222",
                "nats://a:***@h1:4222,nats://b:***@h2:4222",
            ),
            // Unencoded `/`, `#`, `@` in the password.
            ("nats://u:s3/cret@host:4222", "nats://u:***@host:4222"),
            ("nats://u:s3#cret@host", "nats://u:***@host"),
            ("nats://u:s3@cret@host", "nats://u:***@host"),
            // `@` after the path does not count when the userinfo is plain.
            (
                "postgres://u:s3cret@h/db?application_name=a@b",
                "postgres://u:***@h/db?application_name=a@b",
            ),
            (
                "url \"nats://u:s3cret@h\" refused",
                "url \"nats://u:***@h\" refused",
            ),
        ];
        for (input, want) in cases {
            let got = redact(input);
            assert_eq!(got, want, "{input}");
            assert!(!got.contains("s3"), "{input}: {got}");
            assert_eq!(redact(&got), got, "idempotent on {input}");
        }
    }

    #[test]
    fn secret_settings_in_a_query_or_a_key_value_string_are_masked() {
        let cases = [
            (
                "postgres://db:5432/jobs?sslmode=require&password=s3cret",
                "postgres://db:5432/jobs?sslmode=require&password=***",
            ),
            (
                "postgres://db/jobs?PASSWORD=s3cret&application_name=x",
                "postgres://db/jobs?PASSWORD=***&application_name=x",
            ),
            (
                "host=db user=app password=s3cret dbname=jobs",
                "host=db user=app password=*** dbname=jobs",
            ),
            ("password='s3 cr\\'et' host=db", "password=*** host=db"),
            (
                "event store host=db password=s3cret (SYNCJOBS_STORE): not a URL",
                "event store host=db password=*** (SYNCJOBS_STORE): not a URL",
            ),
            ("token=s3cret", "token=***"),
            (
                "postgres://u:s3cret@h/db?sslpassword=s3cret",
                "postgres://u:***@h/db?sslpassword=***",
            ),
        ];
        for (input, want) in cases {
            let got = redact(input);
            assert_eq!(got, want, "{input}");
            assert!(!got.contains("s3"), "{input}: {got}");
            assert_eq!(redact(&got), got, "idempotent on {input}");
        }
        assert_eq!(redact_url("h:4222?password=s3cret"), "h:4222?password=***");
        assert_eq!(redact_url("u:pw@h?password=s3cret"), "u:***@h?password=***");
        // Not a setting: a longer key, or one inside a word.
        for text in ["keypassword=x", "mypass=x", "a=b", "bypass=1"] {
            assert!(matches!(redact(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn text_without_credentials_is_returned_as_is() {
        for text in [
            "nats://127.0.0.1:4222",
            "connection refused",
            "mail ops@example.com about http://example.com/a",
            "",
            "://",
            "x://@",
        ] {
            assert!(
                matches!(redact(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }

    #[test]
    fn a_configured_address_may_leave_out_its_scheme() {
        assert_eq!(redact_url("u:s3cret@h:4222"), "u:***@h:4222");
        assert_eq!(redact_url("s3cret@h"), "***@h");
        assert_eq!(
            redact_url("nats://u:s3cret@h1,u:s3cret@h2:4222"),
            "nats://u:***@h1,u:***@h2:4222"
        );
        assert_eq!(redact_url("nats://u:s3cret@h"), "nats://u:***@h");
        assert!(matches!(
            redact_url("h:4222,h2"),
            Cow::Borrowed("h:4222,h2")
        ));
    }

    #[test]
    fn credentials_are_split_off_for_the_client() {
        assert_eq!(
            split_credentials("nats://user:p%40ss@h:4222,nats://h2:4222"),
            (
                "nats://h:4222,nats://h2:4222".to_owned(),
                Some(("user".to_owned(), Some("p@ss".to_owned())))
            )
        );
        assert_eq!(
            split_credentials("nats://tok@h"),
            ("nats://h".to_owned(), Some(("tok".to_owned(), None)))
        );
        assert_eq!(
            split_credentials("h:4222"),
            ("h:4222".to_owned(), None),
            "no scheme, no credentials"
        );
        assert_eq!(
            split_credentials("u:pw@h:4222"),
            (
                "h:4222".to_owned(),
                Some(("u".to_owned(), Some("pw".to_owned())))
            )
        );
    }
}
