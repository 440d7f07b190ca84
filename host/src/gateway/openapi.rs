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
    modifiers(&BearerAuth),
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

/// `GET /openapi.json`
pub async fn document() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}
