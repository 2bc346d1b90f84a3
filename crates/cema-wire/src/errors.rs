//! The error codes of protocol v1: each with its one HTTP status. The cloud answers with them
//! and the edge matches on them; neither side spells a code as a string literal.

use std::fmt;
use std::str::FromStr;

macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident = ($text:literal, $status:literal),)*) => {
        /// A stable, machine-readable reason for a refusal (the `code` of [`crate::ApiError`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in documentation order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it travels.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                }
            }

            /// The HTTP status every answer with this code carries.
            pub fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                }
            }
        }

        impl FromStr for ErrorCode {
            type Err = UnknownCode;
            fn from_str(s: &str) -> Result<Self, UnknownCode> {
                match s {
                    $($text => Ok(ErrorCode::$variant),)*
                    _ => Err(UnknownCode(s.to_string())),
                }
            }
        }
    };
}

codes! {
    /// Malformed request: bad query, undecodable body, wrong geometry or dtype, bad norm state.
    BadRequest = ("bad_request", 400),
    /// Unknown device or wrong token. Checked before anything else about the request.
    Unauthorized = ("unauthorized", 401),
    /// No route of protocol v1 at this path.
    NotFound = ("not_found", 404),
    /// The route exists, the method does not.
    MethodNotAllowed = ("method_not_allowed", 405),
    /// The device has no session: open one with `PUT session` first.
    NoSession = ("no_session", 404),
    /// The body names a model this cloud does not serve.
    UnknownModel = ("unknown_model", 404),
    /// The request body did not arrive in time (stalled or dribbled).
    RequestTimeout = ("request_timeout", 408),
    /// The upload's sequence number is not the next expected one (`expected_seq` says which is).
    BadSequence = ("bad_sequence", 409),
    /// The body exceeds the cloud's size limit.
    TooLarge = ("too_large", 413),
    /// This session has too many uploads waiting; retry after `Retry-After` seconds.
    Overloaded = ("overloaded", 429),
    /// A fault of the cloud itself.
    Internal = ("internal", 500),
    /// The cloud cannot take this now (its store cannot write, or it holds too many
    /// connections); retry after `Retry-After` seconds. Nothing was changed.
    Unavailable = ("unavailable", 503),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A code this build does not know (a newer cloud's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error code `{0}`")]
pub struct UnknownCode(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for &c in ErrorCode::ALL {
            assert_eq!(c.as_str().parse::<ErrorCode>(), Ok(c));
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert!((400..600).contains(&c.status()));
        }
        assert!("no_such_code".parse::<ErrorCode>().is_err());
    }

    /// The protocol page's table and the OpenAPI document name every code with its status.
    #[test]
    fn the_documents_list_every_code() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        let page = std::fs::read_to_string(docs.join("protocol.md")).unwrap();
        let api = std::fs::read_to_string(docs.join("openapi.yaml")).unwrap();
        for &c in ErrorCode::ALL {
            let row = format!("| {} | `{}` |", c.status(), c.as_str());
            assert!(page.contains(&row), "docs/protocol.md has no row `{row}`");
            let item = format!("            - {}\n", c.as_str());
            assert!(
                api.contains(&item),
                "docs/openapi.yaml: ApiError.code lacks {c}"
            );
        }
    }
}
