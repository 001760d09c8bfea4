//! JSON ↔ protobuf for one route: the request message from the body, the path
//! variables and the query string (proto3 JSON mapping: both field spellings in,
//! camelCase out, 64-bit integers as strings, enums by name, unknown fields
//! refused), and a tonic codec for dynamic messages.

use bytes::Buf;
use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions, Value,
};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::routes::Route;

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
        Kind::Bytes => Value::Bytes(raw.as_bytes().to_vec().into()),
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
        Kind::Message(_) => {
            return Err(bad(path, "is a message; set its fields with dotted names"));
        }
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
        let f = field(&desc, part)
            .ok_or_else(|| bad(seen.clone(), "is not a field of this request"))?;
        if parts.peek().is_none() {
            let value = scalar(&f, &seen, raw)?;
            if f.is_list() {
                if let Value::List(items) = current.get_field_mut(&f) {
                    items.push(value);
                }
            } else if f.is_map() {
                return Err(bad(seen, "map fields cannot be set from a path or query"));
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

/// The request message for `route` from its JSON body, path variables and query string.
pub fn build_request(
    route: &Route,
    body: &[u8],
    path_vars: &[(String, String)],
    query: Option<&str>,
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
    // Query parameters fill what neither the body nor the path set.
    if route.body != "*"
        && let Some(query) = query
    {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode_query(key)
                .ok_or_else(|| bad("query", "is not valid percent-encoded UTF-8"))?;
            let value = decode_query(value)
                .ok_or_else(|| bad(key.clone(), "is not valid percent-encoded UTF-8"))?;
            if path_vars.iter().any(|(p, _)| *p == key) {
                continue;
            }
            set_path(&mut message, &key, &value)?;
        }
    }
    Ok(message)
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
        _ => to_json(message),
    }
}

/// Encodes and decodes `DynamicMessage`s of one RPC's types.
#[derive(Clone, Debug)]
pub struct DynamicCodec {
    pub output: MessageDescriptor,
}

#[derive(Debug)]
pub struct DynamicEncoder;

#[derive(Debug)]
pub struct DynamicDecoder(MessageDescriptor);

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding request: {e}")))
    }
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        DynamicMessage::decode(self.0.clone(), bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding response: {e}")))
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
        DynamicDecoder(self.output.clone())
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
            Some("page_size=5&status=ORDER_STATUS_CONFIRMED&pageToken=a%2Bb"),
        )
        .expect("ok");
        assert_eq!(
            json(&m),
            serde_json::json!({"pageSize":5,"status":"ORDER_STATUS_CONFIRMED","pageToken":"a+b"})
        );
    }

    #[test]
    fn bad_input_names_the_field() {
        let (r, vars) = route(http::Method::POST, "/v1/orders");
        let err = build_request(
            &r,
            br#"{"lines":[{"sku":"A-1","quantity":"x"}]}"#,
            &vars,
            None,
        )
        .expect_err("type");
        assert_eq!(err.field, "lines[0].quantity");
        let err = build_request(&r, br#"{"bogus":1}"#, &vars, None).expect_err("unknown");
        assert!(err.description.contains("bogus"), "{}", err.description);
        let err = build_request(&r, br#"{"lines":["#, &vars, None).expect_err("truncated");
        assert_eq!(err.field, "lines", "where the JSON broke off");

        let (r, vars) = route(http::Method::GET, "/v1/orders");
        let err = build_request(&r, b"", &vars, Some("status=SHIPPED")).expect_err("enum");
        assert_eq!(err.field, "status");
        let err = build_request(&r, b"", &vars, Some("nope=1")).expect_err("unknown query");
        assert_eq!(err.field, "nope");
    }
}
