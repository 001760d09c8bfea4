//! How a route answers a successful call: the status and `Location` that an RPC
//! declares with the `shop.api.v1.http_response` option (201 and the new
//! resource's address for a create, 204 for an answer with nothing in it).
//! Each declaration is checked against the RPC's response message when the
//! gateway starts, so a typo in a field path stops the start, not a request.

use axum::http::{HeaderValue, StatusCode};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MethodDescriptor, Value};

/// The option's full name in the descriptor pool.
const OPTION: &str = "shop.api.v1.http_response";

/// What a successful call of one RPC is answered with over HTTP; by default
/// 200 (`StatusCode`'s default) and no `Location`.
#[derive(Debug, Clone, Default)]
pub struct Success {
    /// 200 unless the RPC declares another 2xx.
    pub status: StatusCode,
    /// The `Location` template as declared ("" when none).
    pub location_template: String,
    location: Vec<Part>,
}

/// A piece of a `Location` template: text as written, or a response field.
#[derive(Debug, Clone)]
enum Part {
    Text(String),
    /// The path from the response message down to a string or integer field.
    Field(Vec<FieldDescriptor>),
}

impl Success {
    /// What `rpc` declares; 200 and no `Location` when it declares nothing.
    pub fn of(rpc: &MethodDescriptor) -> Result<Self, String> {
        let Some(option) = rpc.parent_pool().get_extension_by_name(OPTION) else {
            return Ok(Self::default());
        };
        let options = rpc.options();
        if !options.has_extension(&option) {
            return Ok(Self::default());
        }
        let declared = options.get_extension(&option);
        let Value::Message(declared) = declared.as_ref() else {
            return Ok(Self::default());
        };
        let named = |what: String| format!("{} ({OPTION}): {what}", rpc.full_name());

        let status = match declared.get_field_by_name("status").as_deref() {
            Some(Value::I32(0)) | None => StatusCode::OK,
            Some(Value::I32(n)) => u16::try_from(*n)
                .ok()
                .and_then(|n| StatusCode::from_u16(n).ok())
                .filter(StatusCode::is_success)
                .ok_or_else(|| named(format!("status {n} is not a 2xx code")))?,
            Some(other) => return Err(named(format!("status {other:?} is not a number"))),
        };
        if status != StatusCode::OK && rpc.is_server_streaming() {
            return Err(named("a server stream answers 200 as it starts".into()));
        }
        if status == StatusCode::NO_CONTENT && rpc.output().fields().len() > 0 {
            return Err(named(format!(
                "204 would drop the fields of {}",
                rpc.output().full_name()
            )));
        }

        let template = match declared.get_field_by_name("location").as_deref() {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let location = parse_location(&template, rpc).map_err(named)?;
        Ok(Self {
            status,
            location_template: template,
            location,
        })
    }

    /// The `Location` header for `response`: None when no template is declared
    /// or a field it names is empty (an address with a hole is no address).
    pub fn location(&self, response: &DynamicMessage) -> Option<HeaderValue> {
        if self.location.is_empty() {
            return None;
        }
        let mut out = String::new();
        for part in &self.location {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field(path) => {
                    let value = field_text(response, path)?;
                    if value.is_empty() {
                        return None;
                    }
                    push_segment(&mut out, &value);
                }
            }
        }
        HeaderValue::from_str(&out).ok()
    }
}

/// `"/v1/orders/{order.order_id}"` into its parts, every field path resolved
/// on the RPC's response message down to a single string or integer.
fn parse_location(template: &str, rpc: &MethodDescriptor) -> Result<Vec<Part>, String> {
    if template.is_empty() {
        return Ok(Vec::new());
    }
    if !template.starts_with('/') {
        return Err(format!(
            "location {template:?} must be a path starting with '/'"
        ));
    }
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .ok_or_else(|| format!("location {template:?} has an unclosed '{{'"))?;
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        parts.push(Part::Field(resolve_field(&rest[open + 1..close], rpc)?));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

fn resolve_field(path: &str, rpc: &MethodDescriptor) -> Result<Vec<FieldDescriptor>, String> {
    let mut message = rpc.output();
    let mut fields = Vec::new();
    let names: Vec<&str> = path.split('.').collect();
    for (n, name) in names.iter().enumerate() {
        let field = message.get_field_by_name(name).ok_or_else(|| {
            format!(
                "location field {path:?}: {} has no field {name:?}",
                message.full_name()
            )
        })?;
        if field.is_list() || field.is_map() {
            return Err(format!("location field {path:?}: {name} is repeated"));
        }
        let last = n + 1 == names.len();
        match (field.kind(), last) {
            (Kind::Message(inner), false) => message = inner,
            (
                Kind::String
                | Kind::Int32
                | Kind::Int64
                | Kind::Uint32
                | Kind::Uint64
                | Kind::Sint32
                | Kind::Sint64,
                true,
            ) => {}
            _ => {
                return Err(format!(
                    "location field {path:?} must lead through messages to a string or integer"
                ));
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

/// The value at `path` as text; None when a message on the way is absent.
fn field_text(message: &DynamicMessage, path: &[FieldDescriptor]) -> Option<String> {
    let (last, through) = path.split_last()?;
    let mut current = message;
    let mut held;
    for field in through {
        if !current.has_field(field) {
            return None;
        }
        held = match current.get_field(field).as_ref() {
            Value::Message(inner) => inner.clone(),
            _ => return None,
        };
        current = &held;
    }
    Some(match current.get_field(last).as_ref() {
        Value::String(s) => s.clone(),
        Value::I32(n) => n.to_string(),
        Value::I64(n) => n.to_string(),
        Value::U32(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        _ => return None,
    })
}

/// `value` as one path segment: everything but RFC 3986's unreserved
/// characters percent-encoded, so a `/` or `?` in an id cannot change the path.
fn push_segment(out: &mut String, value: &str) {
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::DescriptorPool;

    fn rpc(service: &str, name: &str) -> MethodDescriptor {
        DescriptorPool::decode(shop_proto::FILE_DESCRIPTOR_SET)
            .expect("descriptors")
            .get_service_by_name(service)
            .and_then(|s| s.methods().find(|m| m.name() == name))
            .expect("rpc")
    }

    #[test]
    fn creates_answer_201_with_the_new_resource_address_and_empty_answers_204() {
        let create = Success::of(&rpc("shop.inventory.v1.InventoryService", "CreateProduct"))
            .expect("declared");
        assert_eq!(create.status, StatusCode::CREATED);
        let mut response = DynamicMessage::new(create_output());
        let mut product = DynamicMessage::new(
            create_output()
                .get_field_by_name("product")
                .and_then(|f| f.kind().as_message().cloned())
                .expect("product"),
        );
        product.set_field_by_name("sku", Value::String("MUG/1 ?x".into()));
        response.set_field_by_name("product", Value::Message(product));
        assert_eq!(
            create.location(&response).expect("location"),
            "/v1/products/MUG%2F1%20%3Fx",
            "a value is one segment, whatever it holds"
        );
        // An answer without the product (or with an empty SKU) has no address.
        assert!(
            create
                .location(&DynamicMessage::new(create_output()))
                .is_none()
        );

        let logout = Success::of(&rpc("shop.user.v1.UserService", "Logout")).expect("declared");
        assert_eq!(logout.status, StatusCode::NO_CONTENT);
        assert!(logout.location_template.is_empty());
        let get = Success::of(&rpc("shop.order.v1.OrderService", "GetOrder")).expect("none");
        assert_eq!(get.status, StatusCode::OK);
    }

    fn create_output() -> prost_reflect::MessageDescriptor {
        rpc("shop.inventory.v1.InventoryService", "CreateProduct").output()
    }

    #[test]
    fn a_location_naming_what_the_response_lacks_is_refused_by_name() {
        let create = rpc("shop.order.v1.OrderService", "CreateOrder");
        for (template, says) in [
            ("/v1/orders/{order.missing}", "has no field \"missing\""),
            ("/v1/orders/{order}", "string or integer"),
            ("/v1/orders/{order.lines}", "repeated"),
            ("v1/orders/{order.order_id}", "starting with '/'"),
            ("/v1/orders/{order.order_id", "unclosed"),
        ] {
            let err = parse_location(template, &create).expect_err(template);
            assert!(err.contains(says), "{template}: {err}");
        }
        assert!(parse_location("/v1/orders/{order.order_id}", &create).is_ok());
    }
}
