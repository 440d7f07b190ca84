//! The OpenAPI 3.1 document, generated from the handlers' annotations so it cannot
//! drift from the routes.

use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{auth, orders, problem, reads, status};

#[derive(OpenApi)]
#[openapi(
    info(title = "Switchyard gateway", description = "Register, log in, top up, place and read orders. Errors are RFC 9457 problem details."),
    paths(
        auth::register, auth::login,
        orders::create_order, orders::get_order, orders::list_orders,
        reads::balance, reads::deposit, reads::me,
        super::health, super::ready,
    ),
    components(schemas(
        problem::Problem, problem::FieldError,
        auth::RegisterRequest, auth::Registered, auth::LoginRequest, auth::TokenResponse,
        orders::OrderRequest, orders::OrderItem, orders::Accepted, orders::OrderView, orders::OrdersPage, status::OrderStatus,
        reads::DepositRequest, reads::DepositAccepted, reads::Me, reads::Profile, reads::Balance,
    )),
    modifiers(&BearerAuth, &InternalErrors),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Every route answers 500 (a problem, no internals) when the database or the status
/// cache fails under it; declared once here rather than on each route.
struct InternalErrors;

impl Modify for InternalErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let internal = ResponseBuilder::new()
            .description("the database or the status cache failed; the cause is logged, not shown")
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build();
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                operation
                    .responses
                    .responses
                    .entry("500".to_string())
                    .or_insert_with(|| internal.clone().into());
            }
        }
    }
}

/// `GET /openapi.json`
pub async fn document() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}
