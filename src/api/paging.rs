//! The one paging style of the list routes: `?limit=&cursor=`, answered with `nextCursor`
//! (`null` on the last page). A cursor is opaque to clients; each list says what it holds.

use std::collections::HashMap;

use super::error::ApiError;

/// A page's size when the caller names none.
pub const DEFAULT_PAGE: usize = 50;

/// The most a page may hold.
pub const MAX_PAGE: usize = 200;

/// `limit` and `cursor` of a paged route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub limit: usize,
    pub cursor: Option<String>,
}

/// The document's form of `limit` and `cursor`, for a paged route's `params(PageParams)`; the
/// route itself reads them with [`page`].
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // never built: only its `IntoParams` impl is used
pub struct PageParams {
    /// How many items the page holds (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// The previous page's `nextCursor`; absent for the first page.
    #[param(min_length = 1)]
    pub cursor: Option<String>,
}

/// [`PageParams`] for a list whose cursor is a number (a conversation's turns).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // never built: only its `IntoParams` impl is used
pub struct NumberedPageParams {
    /// How many items the page holds (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// The previous page's `nextCursor`, digits only; absent for the first page.
    #[param(pattern = r"^[0-9]{1,9}$")]
    pub cursor: Option<String>,
}

/// Reads `limit` and `cursor` from `query`; any parameter other than those and `others` is
/// refused, so a misspelt filter is an error rather than a silently unfiltered list.
pub fn page(query: &HashMap<String, String>, others: &[&str]) -> Result<Page, ApiError> {
    if let Some(unknown) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "limit" | "cursor") && !others.contains(&k.as_str()))
    {
        let mut expected = vec!["limit", "cursor"];
        expected.extend_from_slice(others);
        return Err(ApiError::BadRequest {
            code: "unknown_query_parameter",
            message: format!(
                "unknown query parameter {unknown:?}; expected one of {}",
                expected.join(", ")
            ),
        });
    }
    let limit = match query.get("limit") {
        None => DEFAULT_PAGE,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_field("limit", format!("must be from 1 to {MAX_PAGE}"))
            })?,
    };
    let cursor = query.get("cursor").cloned();
    if cursor.as_deref().is_some_and(str::is_empty) {
        return Err(ApiError::invalid_field("cursor", "must not be empty"));
    }
    Ok(Page { limit, cursor })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn limit_and_cursor_are_read_and_bounded() {
        assert_eq!(
            page(&query(&[]), &[]).expect("empty"),
            Page {
                limit: DEFAULT_PAGE,
                cursor: None
            }
        );
        let read = page(
            &query(&[("limit", "3"), ("cursor", "c"), ("status", "x")]),
            &["status"],
        )
        .expect("read");
        assert_eq!((read.limit, read.cursor.as_deref()), (3, Some("c")));
        for bad in [
            query(&[("limit", "0")]),
            query(&[("limit", "201")]),
            query(&[("limit", "x")]),
            query(&[("cursor", "")]),
            query(&[("status", "x")]),
        ] {
            assert!(page(&bad, &[]).is_err(), "{bad:?}");
        }
    }
}
