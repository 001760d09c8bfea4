//! REST routes read from the `google.api.http` annotations in the descriptor set:
//! the HTTP method, the path template (`/v1/products/{sku}`, `{name=shelves/*}`,
//! custom verbs such as `:cancel`), which request field the body fills, and
//! which response field becomes the body.

use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};

/// One piece of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// A variable bound to a request field path (`sku`, `shelf.name`), matching
    /// one segment (`*`), any number (`**`), or a fixed sub-pattern.
    Variable {
        field: String,
        pattern: Vec<String>,
    },
}

#[derive(Debug, Clone)]
pub struct Route {
    pub method: http::Method,
    pub template: String,
    pub segments: Vec<Segment>,
    pub verb: Option<String>,
    /// "" (no body), "*" (the whole request), or a field name.
    pub body: String,
    /// "" (the whole response) or a field name.
    pub response_body: String,
    pub rpc: MethodDescriptor,
}

impl Route {
    /// The gRPC path, e.g. `/shop.user.v1.UserService/Register`.
    pub fn grpc_path(&self) -> String {
        format!(
            "/{}/{}",
            self.rpc.parent_service().full_name(),
            self.rpc.name()
        )
    }

    /// The path variables' values when `path` matches this route's template.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let path = path.strip_prefix('/')?;
        let (path, verb) = match &self.verb {
            Some(verb) => (path.strip_suffix(&format!(":{verb}"))?, Some(verb)),
            None => (path, None),
        };
        if verb.is_none()
            && path
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':'))
        {
            // A custom verb this route does not have.
            return None;
        }
        let parts: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        let mut bound = Vec::new();
        let mut i = 0;
        for (n, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Literal(lit) => {
                    if parts.get(i)? != lit {
                        return None;
                    }
                    i += 1;
                }
                Segment::Variable { field, pattern } => {
                    let take = if pattern.iter().any(|p| p == "**") {
                        // `**` takes what the segments after it leave.
                        parts.len().checked_sub(i + self.segments.len() - n - 1)?
                    } else {
                        pattern.len()
                    };
                    let taken = parts.get(i..i + take)?;
                    for (p, value) in pattern.iter().zip(taken) {
                        if p != "*" && p != "**" && p != value {
                            return None;
                        }
                    }
                    if taken.iter().any(|v| v.is_empty()) {
                        return None;
                    }
                    bound.push((field.clone(), decode_percent(&taken.join("/"))?));
                    i += take;
                }
            }
        }
        (i == parts.len()).then_some(bound)
    }
}

/// `%XX` escapes decoded; None when they do not make UTF-8.
pub(crate) fn decode_percent(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses a path template such as `/v1/{name=shelves/*}/books:list`.
pub fn parse_template(template: &str) -> Result<(Vec<Segment>, Option<String>), String> {
    let rest = template
        .strip_prefix('/')
        .ok_or_else(|| format!("template {template:?} must start with '/'"))?;
    // The verb follows the last ':' outside braces.
    let mut depth = 0;
    let mut verb_at = None;
    for (i, c) in rest.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ':' if depth == 0 => verb_at = Some(i),
            _ => {}
        }
    }
    let (path, verb) = match verb_at {
        Some(i) => (&rest[..i], Some(rest[i + 1..].to_owned())),
        None => (rest, None),
    };
    let mut segments = Vec::new();
    let mut chars = path.chars().peekable();
    let mut literal = String::new();
    while let Some(c) = chars.next() {
        match c {
            '{' => {
                let mut inner = String::new();
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                    inner.push(c);
                }
                let (field, pattern) = match inner.split_once('=') {
                    Some((f, p)) => (f.to_owned(), p.split('/').map(str::to_owned).collect()),
                    None => (inner.clone(), vec!["*".to_owned()]),
                };
                if field.is_empty() {
                    return Err(format!("template {template:?} has an empty variable"));
                }
                segments.push(Segment::Variable { field, pattern });
            }
            '/' => {
                if !literal.is_empty() {
                    segments.push(Segment::Literal(std::mem::take(&mut literal)));
                }
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok((segments, verb))
}

fn rule_routes(
    rpc: &MethodDescriptor,
    rule: &DynamicMessage,
    out: &mut Vec<Route>,
) -> Result<(), String> {
    let text = |name: &str| match rule.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let mut binding = None;
    for (name, method) in [
        ("get", http::Method::GET),
        ("put", http::Method::PUT),
        ("post", http::Method::POST),
        ("delete", http::Method::DELETE),
        ("patch", http::Method::PATCH),
    ] {
        if rule.has_field_by_name(name) {
            binding = Some((method, text(name)));
        }
    }
    if let Some(Value::Message(custom)) = rule.get_field_by_name("custom").as_deref()
        && rule.has_field_by_name("custom")
    {
        let kind = match custom.get_field_by_name("kind").as_deref() {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let path = match custom.get_field_by_name("path").as_deref() {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let method = http::Method::from_bytes(kind.as_bytes()).map_err(|e| e.to_string())?;
        binding = Some((method, path));
    }
    if let Some((method, template)) = binding {
        let (segments, verb) = parse_template(&template)?;
        out.push(Route {
            method,
            template,
            segments,
            verb,
            body: text("body"),
            response_body: text("response_body"),
            rpc: rpc.clone(),
        });
    }
    if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").as_deref() {
        for extra in more {
            if let Value::Message(extra) = extra {
                rule_routes(rpc, extra, out)?;
            }
        }
    }
    Ok(())
}

/// Every annotated RPC of every service in the pool.
pub fn from_descriptors(pool: &DescriptorPool) -> Result<Vec<Route>, String> {
    let http = pool
        .get_extension_by_name("google.api.http")
        .ok_or("the descriptor set lacks google.api.http")?;
    let mut routes = Vec::new();
    for service in pool.services() {
        for rpc in service.methods() {
            let options = rpc.options();
            if !options.has_extension(&http) {
                continue;
            }
            if let Value::Message(rule) = options.get_extension(&http).as_ref() {
                rule_routes(&rpc, rule, &mut routes)?;
            }
        }
    }
    Ok(routes)
}

/// What a request's method and path resolve to.
#[derive(Debug)]
pub enum Resolved<'a> {
    Found(&'a Route, Vec<(String, String)>),
    /// The path exists with other methods.
    WrongMethod(Vec<http::Method>),
    NotFound,
}

pub fn resolve<'a>(routes: &'a [Route], method: &http::Method, path: &str) -> Resolved<'a> {
    let mut allowed = Vec::new();
    for route in routes {
        if let Some(bound) = route.matches(path) {
            if route.method == *method {
                return Resolved::Found(route, bound);
            }
            allowed.push(route.method.clone());
        }
    }
    if allowed.is_empty() {
        Resolved::NotFound
    } else {
        Resolved::WrongMethod(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(shop_proto::FILE_DESCRIPTOR_SET).expect("descriptors")
    }

    #[test]
    fn templates_parse() {
        let (segments, verb) = parse_template("/v1/products/{sku}:adjustStock").expect("parse");
        assert_eq!(verb.as_deref(), Some("adjustStock"));
        assert_eq!(segments.len(), 3);
        let (segments, verb) = parse_template("/v1/{name=shelves/*/books/**}").expect("parse");
        assert_eq!(verb, None);
        assert_eq!(
            segments[1],
            Segment::Variable {
                field: "name".into(),
                pattern: vec!["shelves".into(), "*".into(), "books".into(), "**".into()]
            }
        );
    }

    #[test]
    fn every_annotated_rpc_becomes_a_route() {
        let routes = from_descriptors(&pool()).expect("routes");
        let find = |m: http::Method, p: &str| match resolve(&routes, &m, p) {
            Resolved::Found(route, bound) => (route.rpc.name().to_owned(), bound),
            other => panic!("{m} {p}: {other:?}"),
        };
        assert_eq!(find(http::Method::POST, "/v1/users").0, "Register");
        assert_eq!(find(http::Method::POST, "/v1/auth:login").0, "Login");
        let (rpc, bound) = find(http::Method::GET, "/v1/products/MUG-001");
        assert_eq!(
            (rpc.as_str(), bound),
            ("GetProduct", vec![("sku".to_owned(), "MUG-001".to_owned())])
        );
        let (rpc, bound) = find(http::Method::POST, "/v1/products/MUG-001:adjustStock");
        assert_eq!(
            (rpc.as_str(), bound[0].1.as_str()),
            ("AdjustStock", "MUG-001")
        );
        assert_eq!(
            find(http::Method::POST, "/v1/orders/abc:cancel").0,
            "CancelOrder"
        );
        assert_eq!(
            find(http::Method::GET, "/v1/orders/abc:watch").0,
            "WatchOrder"
        );
        assert_eq!(find(http::Method::GET, "/v1/orders/abc").0, "GetOrder");
        assert!(matches!(
            resolve(&routes, &http::Method::DELETE, "/v1/users"),
            Resolved::WrongMethod(_)
        ));
        assert!(matches!(
            resolve(&routes, &http::Method::GET, "/v1/nothing"),
            Resolved::NotFound
        ));
        assert!(matches!(
            resolve(&routes, &http::Method::POST, "/v1/orders/abc:explode"),
            Resolved::NotFound
        ));
        // Internal RPCs have no annotation and no route.
        assert!(!routes.iter().any(|r| r.rpc.name() == "ReserveStock"));
    }

    #[test]
    fn wildcards_bind_several_segments() {
        let (segments, verb) = parse_template("/v1/{name=shelves/*}/books").expect("parse");
        let rpc = pool()
            .services()
            .next()
            .expect("service")
            .methods()
            .next()
            .expect("method");
        let route = Route {
            method: http::Method::GET,
            template: String::new(),
            segments,
            verb,
            body: String::new(),
            response_body: String::new(),
            rpc,
        };
        assert_eq!(
            route.matches("/v1/shelves/s1/books"),
            Some(vec![("name".into(), "shelves/s1".into())])
        );
        assert_eq!(route.matches("/v1/racks/s1/books"), None);
        assert_eq!(
            route.matches("/v1/shelves/a%20b/books"),
            Some(vec![("name".into(), "shelves/a b".into())])
        );
    }
}
