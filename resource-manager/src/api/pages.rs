//! Paging of long lists: `limit` and a cursor (`before` an app id for apps, newest first;
//! `after` an id for nodes and containers, in id order). The body stays the plain list; a full
//! page carries `Link: <next page>; rel="next"` (RFC 8288, as GitHub's API does), whose URL
//! repeats the filters with the cursor set to the page's last item. No link: the last page.

use axum::Json;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::ApiError;

/// A `limit` parameter: 1 to `max`.
pub fn parse_limit(value: &str, max: usize) -> Result<usize, ApiError> {
    let limit: usize = value
        .parse()
        .map_err(|_| ApiError::bad_request(format!("limit: `{value}` is not a number")))?;
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(format!("limit: must be 1 to {max}")));
    }
    Ok(limit)
}

/// The page as JSON, with a `Link` to the next one when the page is full: `path` with `pairs`
/// (the filters and limit) and `cursor` (its name, and the last item's id).
pub fn page<T: Serialize>(items: Vec<T>, limit: usize, path: &str, pairs: &[(&str, String)], cursor: (&str, Option<String>)) -> Response {
    let full = items.len() >= limit;
    let mut response = Json(items).into_response();
    if let (true, (name, Some(last))) = (full, cursor) {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (key, value) in pairs {
            query.append_pair(key, value);
        }
        query.append_pair("limit", &limit.to_string());
        query.append_pair(name, &last);
        let link = format!("<{path}?{}>; rel=\"next\"", query.finish());
        if let Ok(value) = header::HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    response
}

/// Items after `after` (in the list's order, by `key`), at most `limit`: a page of a list the
/// RM holds whole in memory.
pub fn after<T, K: Ord>(items: Vec<T>, after: Option<K>, limit: usize, key: impl Fn(&T) -> K) -> Vec<T> {
    items
        .into_iter()
        .skip_while(|item| after.as_ref().is_some_and(|after| key(item) <= *after))
        .take(limit)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(response: &Response) -> Option<&str> {
        response.headers().get(header::LINK).map(|value| value.to_str().unwrap())
    }

    #[test]
    fn a_full_page_links_to_the_next_with_its_filters_encoded() {
        let pairs = [("queue", "root.a b".to_owned())];
        let full = page(vec![3, 2], 2, "/v1/apps", &pairs, ("before", Some("application_1_0002".to_owned())));
        assert_eq!(
            link(&full),
            Some("</v1/apps?queue=root.a+b&limit=2&before=application_1_0002>; rel=\"next\"")
        );
        let last = page(vec![1], 2, "/v1/apps", &pairs, ("before", Some("application_1_0001".to_owned())));
        assert_eq!(link(&last), None, "a short page is the last");
        let empty: Response = page(Vec::<u32>::new(), 2, "/v1/apps", &[], ("before", None));
        assert_eq!(link(&empty), None);
    }

    #[test]
    fn pages_of_a_list_follow_the_cursor() {
        let items = vec!["a", "b", "c", "d"];
        assert_eq!(after(items.clone(), None, 2, |item| *item), ["a", "b"]);
        assert_eq!(after(items.clone(), Some("b"), 2, |item| *item), ["c", "d"]);
        assert_eq!(
            after(items.clone(), Some("bb"), 9, |item| *item),
            ["c", "d"],
            "a cursor between items"
        );
        assert!(after(items, Some("d"), 2, |item| *item).is_empty());
    }

    #[test]
    fn a_limit_is_a_number_in_range() {
        assert_eq!(parse_limit("5", 10).unwrap(), 5);
        for bad in ["0", "11", "-1", "five"] {
            assert!(parse_limit(bad, 10).is_err(), "{bad}");
        }
    }
}
