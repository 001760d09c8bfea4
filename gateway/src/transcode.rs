//! JSON ↔ protobuf for one route: the request message from the body, the path
//! variables and the query string (proto3 JSON mapping: both field spellings in,
//! camelCase out, 64-bit integers as strings, enums by name, unknown fields
//! refused), and a tonic codec for dynamic messages.

use bytes::Buf;
use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, SerializeOptions, Value,
};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

use crate::routes::{Route, RouteMethod};

/// A request the client got wrong: 400 with the field named.
#[derive(Debug, thiserror::Error)]
#[error("invalid {field}: {description}")]
pub struct BadRequest {
    pub field: String,
    pub description: String,
}

fn bad(field: impl Into<String>, description: impl Into<String>) -> BadRequest {
    BadRequest {
        field: field.into(),
        description: description.into(),
    }
}

/// Finds a field by its proto name or its JSON name.
fn field(desc: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_name(name)
        .or_else(|| desc.get_field_by_json_name(name))
}

/// Parses a path or query value into a scalar of the field's type.
fn scalar(field_desc: &FieldDescriptor, path: &str, raw: &str) -> Result<Value, BadRequest> {
    let wrong = |what: &str| bad(path, format!("must be {what}, got {raw:?}"));
    Ok(match field_desc.kind() {
        Kind::String => Value::String(raw.to_owned()),
        Kind::Bool => Value::Bool(match raw {
            "true" => true,
            "false" => false,
            _ => return Err(wrong("true or false")),
        }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(raw.parse().map_err(|_| wrong("a 32-bit integer"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(raw.parse().map_err(|_| wrong("a 64-bit integer"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => {
            Value::U32(raw.parse().map_err(|_| wrong("an unsigned integer"))?)
        }
        Kind::Uint64 | Kind::Fixed64 => {
            Value::U64(raw.parse().map_err(|_| wrong("an unsigned integer"))?)
        }
        Kind::Double => Value::F64(raw.parse().map_err(|_| wrong("a number"))?),
        Kind::Float => Value::F32(raw.parse().map_err(|_| wrong("a number"))?),
        // As in proto3 JSON: base64, standard or URL-safe, padded or not.
        Kind::Bytes => Value::Bytes(decode_base64(raw).ok_or_else(|| wrong("base64"))?.into()),
        Kind::Enum(e) => {
            let value = e
                .get_value_by_name(raw)
                .map(|v| v.number())
                .or_else(|| {
                    raw.parse::<i32>()
                        .ok()
                        .filter(|n| e.get_value(*n).is_some())
                })
                .ok_or_else(|| {
                    wrong(&format!(
                        "one of {}",
                        e.values()
                            .map(|v| v.name().to_owned())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            Value::EnumNumber(value)
        }
        Kind::Message(message) => return query_message(&message, path, raw),
    })
}

fn decode_base64(raw: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = raw.trim_end_matches('=');
    STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .ok()
}

/// `google.protobuf.StringValue`, `Int32Value` and the other wrappers.
fn is_wrapper(message: &MessageDescriptor) -> bool {
    let name = message.full_name();
    name.starts_with("google.protobuf.")
        && name.ends_with("Value")
        && !matches!(name, "google.protobuf.Value" | "google.protobuf.ListValue")
}

/// Whether a query parameter carries this message type as one value.
pub fn is_query_value(message: &MessageDescriptor) -> bool {
    is_wrapper(message)
        || matches!(
            message.full_name(),
            "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask"
        )
}

/// The well-known types that a query string carries as one value, in the forms
/// proto3 JSON gives them: a Timestamp in RFC 3339, a Duration as `1.5s`, a
/// FieldMask as comma-separated paths, a wrapper as its scalar. Any other
/// message is set field by field with dotted names.
fn query_message(message: &MessageDescriptor, path: &str, raw: &str) -> Result<Value, BadRequest> {
    if is_wrapper(message) {
        let Some(inner) = message.get_field_by_name("value") else {
            return Err(bad(path, "is a message; set its fields with dotted names"));
        };
        let mut wrapper = DynamicMessage::new(message.clone());
        wrapper.set_field(&inner, scalar(&inner, path, raw)?);
        return Ok(Value::Message(wrapper));
    }
    let what = match message.full_name() {
        "google.protobuf.Timestamp" => "an RFC 3339 time such as 2026-12-02T10:00:00Z",
        "google.protobuf.Duration" => "a duration in seconds such as 1.5s",
        "google.protobuf.FieldMask" => "field paths separated by commas",
        _ => return Err(bad(path, "is a message; set its fields with dotted names")),
    };
    DynamicMessage::deserialize(message.clone(), serde_json::Value::String(raw.to_owned()))
        .map(Value::Message)
        .map_err(|_| bad(path, format!("must be {what}, got {raw:?}")))
}

/// `name[key]` as a map field's name and the entry's key.
fn map_entry_key(part: &str) -> Option<(&str, &str)> {
    let (name, rest) = part.split_once('[')?;
    Some((name, rest.strip_suffix(']')?))
}

/// A map key of the entry's key type.
fn map_key(key_field: &FieldDescriptor, path: &str, raw: &str) -> Result<MapKey, BadRequest> {
    Ok(match scalar(key_field, path, raw)? {
        Value::String(s) => MapKey::String(s),
        Value::Bool(b) => MapKey::Bool(b),
        Value::I32(n) => MapKey::I32(n),
        Value::I64(n) => MapKey::I64(n),
        Value::U32(n) => MapKey::U32(n),
        Value::U64(n) => MapKey::U64(n),
        _ => return Err(bad(path, "has a key type a query cannot give")),
    })
}

/// Sets `dotted.field.path` on `message` from a string (repeated fields append).
pub fn set_path(message: &mut DynamicMessage, dotted: &str, raw: &str) -> Result<(), BadRequest> {
    let mut parts = dotted.split('.').peekable();
    let mut current = message;
    let mut seen = String::new();
    while let Some(part) = parts.next() {
        if !seen.is_empty() {
            seen.push('.');
        }
        seen.push_str(part);
        let desc = current.descriptor();
        // `labels[colour]=red` sets one entry of the map field `labels`.
        if parts.peek().is_none()
            && let Some((name, key)) = map_entry_key(part)
        {
            let f = field(&desc, name)
                .filter(FieldDescriptor::is_map)
                .ok_or_else(|| bad(seen.clone(), "is not a map field of this request"))?;
            let Kind::Message(entry) = f.kind() else {
                return Err(bad(seen, "is not a map field of this request"));
            };
            let key = map_key(&entry.map_entry_key_field(), &seen, key)?;
            let value = scalar(&entry.map_entry_value_field(), &seen, raw)?;
            if let Value::Map(entries) = current.get_field_mut(&f) {
                entries.insert(key, value);
            }
            return Ok(());
        }
        let f = field(&desc, part)
            .ok_or_else(|| bad(seen.clone(), "is not a field of this request"))?;
        if parts.peek().is_none() {
            if f.is_map() {
                return Err(bad(seen, "is a map: set its entries as name[key]=value"));
            }
            let value = scalar(&f, &seen, raw)?;
            if f.is_list() {
                if let Value::List(items) = current.get_field_mut(&f) {
                    items.push(value);
                }
            } else {
                current.set_field(&f, value);
            }
            return Ok(());
        }
        match current.get_field_mut(&f) {
            Value::Message(inner) if !f.is_list() => current = inner,
            _ => return Err(bad(seen, "is not a message field")),
        }
    }
    Ok(())
}

/// What a query parameter that names no field of the request gets
/// (`UNKNOWN_QUERY_PARAMETERS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownQuery {
    /// Ignored: cache-busters and tracking tags (`?_=1700000000`, `utm_source`)
    /// must not cost a 400.
    #[default]
    Ignore,
    /// Refused with 400 naming the parameter.
    Reject,
}

/// Whether the field at `dotted` holds a value in `message` (a repeated field:
/// any item); false when the path names no field.
fn is_set(message: &DynamicMessage, dotted: &str) -> bool {
    let mut current = message.clone();
    let mut parts = dotted.split('.').peekable();
    while let Some(part) = parts.next() {
        let Some(f) = field(&current.descriptor(), part) else {
            return false;
        };
        if !current.has_field(&f) {
            return false;
        }
        if parts.peek().is_none() {
            return true;
        }
        match current.get_field(&f).as_ref() {
            Value::Message(inner) => current = inner.clone(),
            _ => return false,
        }
    }
    false
}

/// The request message for `route` from its JSON body, path variables and query
/// string. Precedence is path > body > query: a path variable overrides what the
/// body says, and a query parameter only fills what neither set.
pub fn build_request(
    route: &Route,
    body: &[u8],
    path_vars: &[(String, String)],
    query: Option<&str>,
    unknown_query: UnknownQuery,
) -> Result<DynamicMessage, BadRequest> {
    let input = route.rpc.input();
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let parse_json = |desc: MessageDescriptor, what: &str| -> Result<DynamicMessage, BadRequest> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let mut track = serde_path_to_error::Track::new();
        let message = DynamicMessage::deserialize_with_options(
            desc,
            serde_path_to_error::Deserializer::new(&mut de, &mut track),
            &options,
        )
        .map_err(|e| {
            // Name the field that failed (e.g. lines[0].quantity), not just the body.
            let path = track.path().to_string();
            let field = if path.is_empty() || path == "." {
                what.to_owned()
            } else if what == "body" {
                path
            } else {
                format!("{what}.{path}")
            };
            bad(field, strip_position(&e.to_string()))
        })?;
        de.end().map_err(|e| bad(what, e.to_string()))?;
        Ok(message)
    };
    let body_is_empty = body.iter().all(u8::is_ascii_whitespace);
    let mut message = match route.body.as_str() {
        "" => DynamicMessage::new(input.clone()),
        "*" if body_is_empty => DynamicMessage::new(input.clone()),
        "*" => parse_json(input.clone(), "body")?,
        name => {
            let mut message = DynamicMessage::new(input.clone());
            if !body_is_empty {
                let f = field(&input, name)
                    .ok_or_else(|| bad("body", format!("route names unknown field {name}")))?;
                let value = match f.kind() {
                    Kind::Message(desc) => Value::Message(parse_json(desc, name)?),
                    _ => return Err(bad(name, "only message fields can take the body")),
                };
                message.set_field(&f, value);
            }
            message
        }
    };
    for (name, value) in path_vars {
        set_path(&mut message, name, value)?;
    }
    // Query parameters fill what neither the body nor the path set: whether a
    // field was set is read before the first parameter, so `?tag=a&tag=b` still
    // makes a list while a body's list is left alone.
    if route.body == "*" {
        return Ok(message);
    }
    if let Some(query) = query {
        apply_query(route, &mut message, query, path_vars, unknown_query)?;
    }
    fill_update_mask(route, body, path_vars, &mut message);
    Ok(message)
}

/// A client stream's messages from an NDJSON body: one per line that is not
/// blank, each read as `build_request` reads a body (path and query apply to
/// each). An error names the message by its index among them, as the service
/// numbers what it was sent (`[2].product.sku`).
pub fn build_stream(
    route: &Route,
    body: &[u8],
    path_vars: &[(String, String)],
    query: Option<&str>,
    unknown_query: UnknownQuery,
    max_messages: usize,
) -> Result<Vec<DynamicMessage>, BadRequest> {
    let lines: Vec<&[u8]> = body
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .take(max_messages.saturating_add(1))
        .collect();
    // Counted before any is built: a message costs more memory than its line.
    if lines.len() > max_messages {
        return Err(bad(
            format!("[{max_messages}]"),
            too_many_messages(max_messages),
        ));
    }
    lines
        .into_iter()
        .enumerate()
        .map(|(index, line)| {
            build_request(route, line, path_vars, query, unknown_query).map_err(|e| BadRequest {
                field: format!("[{index}].{}", e.field),
                description: e.description,
            })
        })
        .collect()
}

/// Why a client stream of more than `most` messages is refused.
pub fn too_many_messages(most: usize) -> String {
    format!("a stream carries at most {most} messages")
}

/// Sets the query's parameters that name a field neither the body nor the path
/// set (see `build_request`).
fn apply_query(
    route: &Route,
    message: &mut DynamicMessage,
    query: &str,
    path_vars: &[(String, String)],
    unknown_query: UnknownQuery,
) -> Result<(), BadRequest> {
    let input = route.rpc.input();
    let before = message.clone();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key =
            decode_query(key).ok_or_else(|| bad("query", "is not valid percent-encoded UTF-8"))?;
        let value = decode_query(value)
            .ok_or_else(|| bad(key.clone(), "is not valid percent-encoded UTF-8"))?;
        // The request's own field the key starts at (`a.b` → a, `m[k]` → m).
        let top = key.split(['.', '[']).next().unwrap_or_default();
        if field(&input, top).is_none() {
            if unknown_query == UnknownQuery::Reject {
                return Err(bad(key, "is not a field of this request"));
            }
            continue;
        }
        let owned_by_body =
            !route.body.is_empty() && field(&input, top).is_some_and(|f| f.name() == route.body);
        let bound_by_path = path_vars
            .iter()
            .any(|(p, _)| *p == key || key.starts_with(&format!("{p}.")));
        if owned_by_body || bound_by_path || is_set(&before, &key) {
            continue;
        }
        set_path(message, &key, &value)?;
    }
    Ok(())
}

/// The `update_mask` a PATCH route fills from its body, and the message its
/// paths name: for a route whose body is one message field of a request that
/// has a `google.protobuf.FieldMask update_mask`.
pub fn filled_mask(route: &Route) -> Option<(FieldDescriptor, MessageDescriptor)> {
    if route.method != RouteMethod::One(http::Method::PATCH) || route.body.is_empty() {
        return None;
    }
    let input = route.rpc.input();
    let mask = input.get_field_by_name("update_mask")?;
    let Kind::Message(mask_type) = mask.kind() else {
        return None;
    };
    let Kind::Message(body_type) = field(&input, &route.body)?.kind() else {
        return None;
    };
    (mask_type.full_name() == "google.protobuf.FieldMask" && !mask.is_list())
        .then_some((mask, body_type))
}

/// A PATCH changes what its body names: the mask is the body's top-level
/// fields that are not null, less those the path binds, so a client sends only
/// what changes (`"description": ""` clears it). A message-typed field is one
/// path (it changes whole). The body decides alone: an `updateMask` in the
/// query is overruled, as the body overrules the query everywhere, since a
/// mask naming what the body leaves out would clear fields that JSON cannot
/// show being cleared.
fn fill_update_mask(
    route: &Route,
    body: &[u8],
    path_vars: &[(String, String)],
    message: &mut DynamicMessage,
) {
    let Some((mask_field, body_type)) = filled_mask(route) else {
        return;
    };
    let Ok(serde_json::Value::Object(sent)) = serde_json::from_slice(body) else {
        return;
    };
    let prefix = format!("{}.", route.body);
    let bound: Vec<&str> = path_vars
        .iter()
        .filter_map(|(p, _)| p.strip_prefix(&prefix))
        .collect();
    // Read from the JSON, not the parsed message, which cannot tell a field
    // sent empty (`""`: clear it) from one left out. A null is proto3 JSON for
    // "left out": not a change.
    let paths = sent
        .iter()
        .filter(|(_, value)| !value.is_null())
        .filter_map(|(key, _)| field(&body_type, key))
        .filter(|f| !bound.contains(&f.name()))
        .map(|f| Value::String(f.name().to_owned()))
        .collect();
    let Kind::Message(mask_type) = mask_field.kind() else {
        return;
    };
    let mut mask = DynamicMessage::new(mask_type);
    mask.set_field_by_name("paths", Value::List(paths));
    message.set_field(&mask_field, Value::Message(mask));
}

/// serde_json's message without " at line L column C" (the field is named instead).
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn decode_query(raw: &str) -> Option<String> {
    crate::routes::decode_percent(&raw.replace('+', " "))
}

/// Whether `message` is google.api.HttpBody: a body the gateway sends as it is,
/// with the Content-Type it names, instead of as JSON.
pub fn is_http_body(message: &MessageDescriptor) -> bool {
    message.full_name() == "google.api.HttpBody"
}

/// The message or field a route's body fills when it is a `google.api.HttpBody`
/// (a raw upload): `None` for a route whose body is JSON.
fn http_body_target(route: &Route) -> Option<Option<FieldDescriptor>> {
    let input = route.rpc.input();
    match route.body.as_str() {
        "" => None,
        "*" => is_http_body(&input).then_some(None),
        name => {
            let f = field(&input, name)?;
            match f.kind() {
                Kind::Message(m) if is_http_body(&m) && !f.is_list() => Some(Some(f)),
                _ => None,
            }
        }
    }
}

/// Whether the route's body is taken as it is (a `google.api.HttpBody`).
pub fn takes_raw_body(route: &Route) -> bool {
    http_body_target(route).is_some()
}

/// The request of a route whose body is a `google.api.HttpBody`: the body's
/// bytes as they came, with the request's Content-Type (none read as JSON);
/// path and query fill the other fields as for any route. `None` when the
/// route's body is JSON.
pub fn build_raw_request(
    route: &Route,
    body: &bytes::Bytes,
    content_type: &str,
    path_vars: &[(String, String)],
    query: Option<&str>,
    unknown_query: UnknownQuery,
) -> Option<Result<DynamicMessage, BadRequest>> {
    let target = http_body_target(route)?;
    let raw = |desc: MessageDescriptor| {
        let mut http_body = DynamicMessage::new(desc);
        http_body.set_field_by_name("content_type", Value::String(content_type.to_owned()));
        http_body.set_field_by_name("data", Value::Bytes(body.clone()));
        http_body
    };
    Some(match target {
        None => Ok(raw(route.rpc.input())),
        Some(f) => build_request(route, b"", path_vars, query, unknown_query).map(|mut message| {
            if let Kind::Message(desc) = f.kind() {
                message.set_field(&f, Value::Message(raw(desc)));
            }
            message
        }),
    })
}

/// An HttpBody's content type ("" when it names none) and bytes.
pub fn http_body_parts(message: &DynamicMessage) -> (String, bytes::Bytes) {
    let content_type = match message.get_field_by_name("content_type").as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let data = match message.get_field_by_name("data").as_deref() {
        Some(Value::Bytes(b)) => b.clone(),
        _ => bytes::Bytes::new(),
    };
    (content_type, data)
}

/// The JSON of a response (or of its `response_body` field).
pub fn response_json(route: &Route, message: &DynamicMessage) -> serde_json::Value {
    let options = SerializeOptions::new().skip_default_fields(false);
    let to_json = |m: &DynamicMessage| {
        m.serialize_with_options(serde_json::value::Serializer, &options)
            .unwrap_or(serde_json::Value::Null)
    };
    if route.response_body.is_empty() {
        return to_json(message);
    }
    match message.get_field_by_name(&route.response_body).as_deref() {
        Some(Value::Message(inner)) => to_json(inner),
        // A scalar, list or map field: its proto3 JSON form, as the whole
        // message's JSON spells it (OpenAPI advertises that field alone).
        Some(_) => {
            let json_name = message
                .descriptor()
                .get_field_by_name(&route.response_body)
                .map(|f| f.json_name().to_owned())
                .unwrap_or_default();
            to_json(message)
                .get_mut(&json_name)
                .map(serde_json::Value::take)
                .unwrap_or(serde_json::Value::Null)
        }
        None => to_json(message),
    }
}

/// Encodes and decodes `DynamicMessage`s of one RPC's types.
#[derive(Clone, Debug)]
pub struct DynamicCodec {
    /// What the other side's messages are.
    decodes: MessageDescriptor,
    /// What a message that does not decode is: a backend's fault when the gateway
    /// reads answers (INTERNAL), the client's when it reads requests.
    malformed: Code,
}

impl DynamicCodec {
    /// The gateway as a backend's client: it sends requests, reads `output`.
    pub fn for_responses(output: MessageDescriptor) -> Self {
        Self {
            decodes: output,
            malformed: Code::Internal,
        }
    }

    /// The gateway as a gRPC server at the edge: it reads `input` from clients.
    pub fn for_requests(input: MessageDescriptor) -> Self {
        Self {
            decodes: input,
            malformed: Code::InvalidArgument,
        }
    }
}

#[derive(Debug)]
pub struct DynamicEncoder;

#[derive(Debug)]
pub struct DynamicDecoder(MessageDescriptor, Code);

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding {}: {e}", item.descriptor().name())))
    }
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        DynamicMessage::decode(self.0.clone(), bytes)
            .map(Some)
            .map_err(|e| {
                Status::new(
                    self.1,
                    format!("the message is not a valid {}: {e}", self.0.full_name()),
                )
            })
    }
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder(self.decodes.clone(), self.malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{Resolved, from_descriptors, resolve};

    fn route(method: http::Method, path: &str) -> (Route, Vec<(String, String)>) {
        let pool =
            prost_reflect::DescriptorPool::decode(shop_proto::FILE_DESCRIPTOR_SET).expect("pool");
        let routes = from_descriptors(&pool).expect("routes");
        match resolve(&routes, &method, path) {
            Resolved::Found(r, vars) => (r.clone(), vars),
            other => panic!("{other:?}"),
        }
    }

    fn json(m: &DynamicMessage) -> serde_json::Value {
        serde_json::to_value(m).expect("json")
    }

    #[test]
    fn body_path_and_query_fill_the_request() {
        let (r, vars) = route(http::Method::POST, "/v1/products/MUG-1:adjustStock");
        let m = build_request(
            &r,
            br#"{"delta":"3","reason":"restock","request_id":"r1"}"#,
            &vars,
            None,
            UnknownQuery::Ignore,
        )
        .expect("ok");
        assert_eq!(
            json(&m),
            serde_json::json!({"sku":"MUG-1","delta":"3","reason":"restock","requestId":"r1"})
        );

        let (r, vars) = route(http::Method::GET, "/v1/orders");
        let m = build_request(
            &r,
            b"",
            &vars,
            Some("page_size=5&status=ORDER_STATUS_CONFIRMED&pageToken=a%2Bb&utm_source=x"),
            UnknownQuery::Ignore,
        )
        .expect("ok");
        assert_eq!(
            json(&m),
            serde_json::json!({"pageSize":5,"status":"ORDER_STATUS_CONFIRMED","pageToken":"a+b"})
        );
    }

    #[test]
    fn a_patch_without_a_mask_changes_the_fields_its_body_carries() {
        let (r, vars) = route(http::Method::PATCH, "/v1/products/MUG-1");
        let patch = |body: &[u8], query: Option<&str>| {
            json(&build_request(&r, body, &vars, query, UnknownQuery::Ignore).expect("ok"))
        };
        // Either spelling of a name; the path's SKU is not a change, even when
        // the body repeats it; a price is one path.
        assert_eq!(
            patch(
                br#"{"name":"Mug","sku":"MUG-1","unit_price":{"currencyCode":"EUR","amountMinor":"5"}}"#,
                None
            ),
            serde_json::json!({
                "product": {"sku":"MUG-1","name":"Mug","unitPrice":{"currencyCode":"EUR","amountMinor":"5"}},
                "updateMask": "name,unitPrice"
            })
        );
        // An empty value is named too: it clears the field (or is refused);
        // a null is a field left out.
        assert_eq!(
            patch(br#"{"description":"","name":null}"#, None)["updateMask"],
            "description"
        );
        // The body decides: a mask in the query is overruled.
        assert_eq!(
            patch(br#"{"name":"Mug"}"#, Some("updateMask=description"))["updateMask"],
            "name"
        );
        // Other methods never get one.
        let (post, vars) = route(http::Method::POST, "/v1/products/MUG-1:adjustStock");
        let m = build_request(
            &post,
            br#"{"delta":"1"}"#,
            &vars,
            None,
            UnknownQuery::Ignore,
        )
        .expect("ok");
        assert!(json(&m).get("updateMask").is_none());
    }

    #[test]
    fn bad_input_names_the_field() {
        let (r, vars) = route(http::Method::POST, "/v1/orders");
        let err = build_request(
            &r,
            br#"{"lines":[{"sku":"A-1","quantity":"x"}]}"#,
            &vars,
            None,
            UnknownQuery::Ignore,
        )
        .expect_err("type");
        assert_eq!(err.field, "lines[0].quantity");
        let err = build_request(&r, br#"{"bogus":1}"#, &vars, None, UnknownQuery::Ignore)
            .expect_err("unknown");
        assert!(err.description.contains("bogus"), "{}", err.description);
        let err = build_request(&r, br#"{"lines":["#, &vars, None, UnknownQuery::Ignore)
            .expect_err("truncated");
        assert_eq!(err.field, "lines", "where the JSON broke off");

        let (r, vars) = route(http::Method::GET, "/v1/orders");
        let err = build_request(&r, b"", &vars, Some("status=SHIPPED"), UnknownQuery::Ignore)
            .expect_err("enum");
        assert_eq!(err.field, "status");
        let err = build_request(&r, b"", &vars, Some("nope=1"), UnknownQuery::Reject)
            .expect_err("unknown query, strict");
        assert_eq!(err.field, "nope");
        let err = build_request(
            &r,
            b"",
            &vars,
            Some("pageSize=x&nope=1"),
            UnknownQuery::Ignore,
        )
        .expect_err("a known parameter of the wrong type is still refused");
        assert_eq!(err.field, "pageSize");
    }

    #[test]
    fn a_client_stream_takes_one_message_per_ndjson_line() {
        let (r, vars) = route(http::Method::POST, "/v1/products:import");
        assert!(r.rpc.is_client_streaming());
        let body =
            b"{\"sku\":\"TEA-1\",\"name\":\"Teapot\"}\n\n  \n{\"sku\":\"CUP-1\",\"name\":\"Cup\"}";
        let messages = build_stream(&r, body, &vars, None, UnknownQuery::Ignore, 2).expect("two");
        let skus: Vec<_> = messages
            .iter()
            .map(|m| json(m)["product"]["sku"].clone())
            .collect();
        assert_eq!(skus, ["TEA-1", "CUP-1"], "blank lines are no messages");
        let body = b"{\"sku\":\"TEA-1\"}\n{\"sku\":\"CUP-1\",\"stock\":1}\n";
        let err =
            build_stream(&r, body, &vars, None, UnknownQuery::Ignore, 9).expect_err("unknown");
        assert_eq!(err.field, "[1].product", "the second message: {err:?}");
        assert!(err.description.contains("stock"), "{}", err.description);
        let none = build_stream(&r, b"", &vars, None, UnknownQuery::Ignore, 9).expect("empty");
        assert!(none.is_empty());
        let three = b"{}\n{}\n{}\n";
        let err = build_stream(&r, three, &vars, None, UnknownQuery::Ignore, 2).expect_err("over");
        assert_eq!(err.field, "[2]", "the first message past the limit");
    }
}
