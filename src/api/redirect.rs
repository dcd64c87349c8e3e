//! Which redirects of the API's download endpoint are followed: the one rule between the
//! API's `Location` and a request to the object store.
//!
//! The API answers `GET …/download` with a 302 to a presigned URL, and that URL is fetched
//! without the token. Whatever else a `Location` can say is refused here, before any
//! request: another scheme (`file:`, `ftp:`, ... which reqwest would fail on as if the
//! network were down, and which were then retried for the whole retry budget), a step down
//! from https to http (the signed URL and the archive would cross the network in clear),
//! and credentials in the URL (reqwest turns `user:pass@` into a Basic `Authorization`
//! header, a second auth mechanism the store refuses and a secret vm0fs never meant to
//! send). The object store's own redirects are never followed at all (the HTTP client
//! follows none): its answer is the archive or an error.

use reqwest::Url;

/// Why a `Location` is not followed, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not http or https.
    Scheme,
    /// From an https request to an http URL.
    Downgrade,
    /// A user name or password in the URL.
    Userinfo,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Scheme => "only http and https download URLs are fetched",
            Refusal::Downgrade => {
                "an https request is never redirected to http, where the download URL and the archive would travel unencrypted"
            }
            Refusal::Userinfo => {
                "a download URL with a user name or password is refused (credentials are never sent to the object store)"
            }
        }
    }
}

/// Whether the redirect of a request to `from` to `to` may be followed.
pub(crate) fn check(from: &Url, to: &Url) -> Result<(), Refusal> {
    match (from.scheme(), to.scheme()) {
        (_, "https") | ("http", "http") => {}
        ("https", "http") => return Err(Refusal::Downgrade),
        _ => return Err(Refusal::Scheme),
    }
    if !to.username().is_empty() || to.password().is_some() {
        return Err(Refusal::Userinfo);
    }
    Ok(())
}

/// The part of a `Location` an error message may show: its scheme, host and port. Never
/// its path, query or credentials (a presigned URL's query is its signature).
pub(crate) fn target(to: &Url) -> String {
    match to.host_str() {
        Some(host) => match to.port() {
            Some(port) => format!("{}://{host}:{port}", to.scheme()),
            None => format!("{}://{host}", to.scheme()),
        },
        None => format!("a {}: URL", to.scheme()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_s_without_credentials_or_downgrade_is_followed() {
        let https = Url::parse("https://api.vm0.ai/v1/volumes/x/download").unwrap();
        let http = Url::parse("http://127.0.0.1:9/v1/volumes/x/download").unwrap();
        let cases: &[(&Url, &str, Result<(), Refusal>)] = &[
            (
                &https,
                "https://store.example/b/k?X-Amz-Signature=s",
                Ok(()),
            ),
            (&http, "https://store.example/b/k", Ok(())),
            (&http, "http://127.0.0.1:10/store/k", Ok(())),
            (&https, "http://store.example/b/k", Err(Refusal::Downgrade)),
            (&https, "HTTP://store.example/b/k", Err(Refusal::Downgrade)),
            (&http, "file:///etc/passwd", Err(Refusal::Scheme)),
            (&https, "file:///etc/passwd", Err(Refusal::Scheme)),
            (&http, "ftp://store.example/k", Err(Refusal::Scheme)),
            (&http, "data:text/plain,x", Err(Refusal::Scheme)),
            (&http, "gopher://h:70/x", Err(Refusal::Scheme)),
            (
                &http,
                "http://user:pass@127.0.0.1:10/k",
                Err(Refusal::Userinfo),
            ),
            (&http, "http://user@127.0.0.1:10/k", Err(Refusal::Userinfo)),
            (
                &https,
                "https://:pw@store.example/k",
                Err(Refusal::Userinfo),
            ),
        ];
        for (from, to, want) in cases {
            let to = Url::parse(to).unwrap();
            assert_eq!(check(from, &to), *want, "{from} -> {to}");
        }
    }

    #[test]
    fn targets_show_neither_path_query_nor_credentials() {
        let cases = [
            (
                "https://store.example/b/k?X-Amz-Signature=s",
                "https://store.example",
            ),
            (
                "http://u:secret@127.0.0.1:10/k?sig=1",
                "http://127.0.0.1:10",
            ),
            ("file:///etc/passwd", "a file: URL"),
            ("ftp://h:2121/x", "ftp://h:2121"),
        ];
        for (url, want) in cases {
            let shown = target(&Url::parse(url).unwrap());
            assert_eq!(shown, want, "{url}");
        }
    }
}
