//! REST routes read from the `google.api.http` annotations in the descriptor set:
//! the HTTP method, the path template (`/v1/products/{sku}`, `{name=shelves/*}`,
//! custom verbs such as `:cancel`), which request field the body fills, and
//! which response field becomes the body.

use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};

use crate::success::Success;

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

/// The HTTP method a route answers: one, or any (`custom` with kind `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMethod {
    One(http::Method),
    Any,
}

impl RouteMethod {
    pub fn accepts(&self, method: &http::Method) -> bool {
        match self {
            Self::One(m) => m == method,
            Self::Any => true,
        }
    }

    fn overlaps(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::One(a), Self::One(b)) => a == b,
            _ => true,
        }
    }
}

impl std::fmt::Display for RouteMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::One(m) => write!(f, "{m}"),
            Self::Any => write!(f, "*"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub method: RouteMethod,
    pub template: String,
    pub segments: Vec<Segment>,
    pub verb: Option<String>,
    /// "" (no body), "*" (the whole request), or a field name.
    pub body: String,
    /// "" (the whole response) or a field name.
    pub response_body: String,
    pub rpc: MethodDescriptor,
    /// 0 for the rule itself, n for its n-th `additional_bindings` entry.
    pub binding: usize,
    /// The status and `Location` of a successful answer (the RPC's
    /// `shop.api.v1.http_response`); a GET keeps 200.
    pub success: Success,
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

    /// The path variables' values when `path` matches this route's template. A
    /// route without a verb takes a final `:suffix` as part of its last segment
    /// (`resolve` tries the routes that register the verb first).
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => path,
        };
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
                    // A variable over several segments keeps `%2F` as sent, so a
                    // slash inside a segment stays apart from the slashes between
                    // them (the google.api.http rule); one segment decodes fully.
                    let several = pattern.len() > 1 || pattern.iter().any(|p| p == "**");
                    bound.push((field.clone(), decode_path(&taken.join("/"), several)?));
                    i += take;
                }
            }
        }
        (i == parts.len()).then_some(bound)
    }

    /// Two routes conflict when some request would match both: the same method
    /// (or any), the same verb, and templates of the same shape.
    fn conflicts_with(&self, other: &Self) -> bool {
        let shape = |r: &Self| {
            r.segments
                .iter()
                .map(|s| match s {
                    Segment::Literal(l) => vec![l.clone()],
                    Segment::Variable { pattern, .. } => {
                        pattern.iter().map(|p| format!("{{{p}}}")).collect()
                    }
                })
                .collect::<Vec<_>>()
        };
        self.method.overlaps(&other.method)
            && self.verb == other.verb
            && shape(self) == shape(other)
    }

    /// `METHOD template (package.Service/Rpc)`, as start-up errors name a route.
    pub fn describe(&self) -> String {
        format!(
            "{} {} ({})",
            self.method,
            self.template,
            self.rpc.full_name()
        )
    }
}

/// A path variable's `%XX` escapes decoded, `%2F` kept as sent when
/// `keep_slashes`; None when they do not make UTF-8.
fn decode_path(raw: &str, keep_slashes: bool) -> Option<String> {
    if !keep_slashes {
        return decode_percent(raw);
    }
    let parts: Option<Vec<String>> = split_keeping_escaped_slashes(raw)
        .into_iter()
        .map(|piece| match piece {
            Piece::Text(t) => decode_percent(t),
            Piece::EscapedSlash(s) => Some(s.to_owned()),
        })
        .collect();
    parts.map(|p| p.concat())
}

enum Piece<'a> {
    Text(&'a str),
    EscapedSlash(&'a str),
}

fn split_keeping_escaped_slashes(raw: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 3 <= raw.len() {
        if raw.is_char_boundary(i)
            && raw.is_char_boundary(i + 3)
            && raw[i..i + 3].eq_ignore_ascii_case("%2f")
        {
            pieces.push(Piece::Text(&raw[start..i]));
            pieces.push(Piece::EscapedSlash(&raw[i..i + 3]));
            i += 3;
            start = i;
        } else {
            i += 1;
        }
    }
    pieces.push(Piece::Text(&raw[start..]));
    pieces
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
            binding = Some((RouteMethod::One(method), text(name)));
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
        // Kind `*` stands for every method, not one named "*".
        let method = if kind == "*" {
            RouteMethod::Any
        } else {
            RouteMethod::One(http::Method::from_bytes(kind.as_bytes()).map_err(|e| e.to_string())?)
        };
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
            binding: 0,
            success: Success::default(),
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
                let first = routes.len();
                rule_routes(&rpc, rule, &mut routes)?;
                let success = Success::of(&rpc)?;
                // The rule first, then its additional bindings in order.
                for (n, route) in routes[first..].iter_mut().enumerate() {
                    route.binding = n;
                    route.success = success.clone();
                }
            }
        }
    }
    check_conflicts(&routes)?;
    Ok(routes)
}

/// Which of two routes that match the same requests wins would depend on the
/// order of declarations: the gateway refuses to start instead, naming both.
fn check_conflicts(routes: &[Route]) -> Result<(), String> {
    for (i, a) in routes.iter().enumerate() {
        if let Some(b) = routes[i + 1..].iter().find(|b| a.conflicts_with(b)) {
            return Err(format!(
                "route conflict: {} and {} match the same requests",
                a.describe(),
                b.describe()
            ));
        }
    }
    Ok(())
}

/// What a request's method and path resolve to.
#[derive(Debug)]
pub enum Resolved<'a> {
    Found(&'a Route, Vec<(String, String)>),
    /// The path exists with other methods.
    WrongMethod(Vec<http::Method>),
    NotFound,
}

/// The route for `method` and `path`. Routes whose custom verb the path ends
/// with are tried first; when none registers it, `:suffix` is part of the last
/// segment and the routes without a verb are tried (a product named `A:B`).
pub fn resolve<'a>(routes: &'a [Route], method: &http::Method, path: &str) -> Resolved<'a> {
    for with_verb in [true, false] {
        let mut allowed = Vec::new();
        for route in routes.iter().filter(|r| r.verb.is_some() == with_verb) {
            let Some(bound) = route.matches(path) else {
                continue;
            };
            if route.method.accepts(method) {
                return Resolved::Found(route, bound);
            }
            if let RouteMethod::One(m) = &route.method {
                allowed.push(m.clone());
            }
        }
        if !allowed.is_empty() {
            return Resolved::WrongMethod(allowed);
        }
    }
    Resolved::NotFound
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
        // A verb no route registers is part of the last segment.
        let (rpc, bound) = find(http::Method::GET, "/v1/orders/abc:explode");
        assert_eq!(
            (rpc.as_str(), bound),
            (
                "GetOrder",
                vec![("order_id".to_owned(), "abc:explode".to_owned())]
            )
        );
        // A registered verb is the verb, with its own methods.
        assert!(matches!(
            resolve(&routes, &http::Method::GET, "/v1/orders/abc:cancel"),
            Resolved::WrongMethod(m) if m == [http::Method::POST]
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
            method: RouteMethod::One(http::Method::GET),
            template: String::new(),
            segments,
            verb,
            body: String::new(),
            response_body: String::new(),
            rpc,
            binding: 0,
            success: Success::default(),
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
        // Over several segments `%2F` stays as sent (either case); the rest decodes.
        assert_eq!(
            route.matches("/v1/shelves/a%2Fb%2f%41/books"),
            Some(vec![("name".into(), "shelves/a%2Fb%2fA".into())])
        );
    }

    #[test]
    fn one_segment_variables_decode_slashes() {
        let routes = from_descriptors(&pool()).expect("routes");
        let Resolved::Found(_, bound) = resolve(&routes, &http::Method::GET, "/v1/products/A%2FB")
        else {
            panic!("routed");
        };
        assert_eq!(bound, vec![("sku".to_owned(), "A/B".to_owned())]);
    }

    #[test]
    fn routes_that_match_the_same_requests_are_refused_naming_both() {
        let mut routes = from_descriptors(&pool()).expect("routes");
        let get_product = routes
            .iter()
            .find(|r| r.rpc.name() == "GetProduct")
            .expect("GetProduct")
            .clone();
        let mut clash = routes
            .iter()
            .find(|r| r.rpc.name() == "GetOrder")
            .expect("GetOrder")
            .clone();
        let (segments, verb) = parse_template("/v1/products/{other}").expect("parse");
        (clash.segments, clash.verb, clash.template) =
            (segments, verb, "/v1/products/{other}".into());
        assert!(get_product.conflicts_with(&clash));
        routes.push(clash.clone());
        let other_verb = Route {
            verb: Some("archive".into()),
            ..clash.clone()
        };
        assert!(!get_product.conflicts_with(&other_verb), "another verb");
        let any = Route {
            method: RouteMethod::Any,
            ..clash
        };
        assert!(get_product.conflicts_with(&any), "any method overlaps GET");
        let message = check_conflicts(&routes).expect_err("conflict");
        assert!(
            message
                .contains("GET /v1/products/{sku} (shop.inventory.v1.InventoryService.GetProduct)")
                && message
                    .contains("GET /v1/products/{other} (shop.order.v1.OrderService.GetOrder)"),
            "{message}"
        );
    }

    #[test]
    fn a_custom_rule_of_kind_star_takes_every_method() {
        let mut route = from_descriptors(&pool())
            .expect("routes")
            .into_iter()
            .find(|r| r.rpc.name() == "GetProduct")
            .expect("GetProduct");
        route.method = RouteMethod::Any;
        let routes = [route];
        for method in [http::Method::GET, http::Method::POST, http::Method::DELETE] {
            assert!(
                matches!(
                    resolve(&routes, &method, "/v1/products/MUG-001"),
                    Resolved::Found(..)
                ),
                "{method}"
            );
        }
        assert!(!RouteMethod::One(http::Method::GET).accepts(&http::Method::POST));
    }
}
