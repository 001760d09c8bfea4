use shop_platform::config::Secret;
use shop_platform::{Shutdown, auth::TokenSigner};
use shop_proto::user as pb;
use shop_proto::user::user_service_client::UserServiceClient;
use shop_testkit::{Identity, KeyPair, TestDatabase};
use shop_user::{Application, Settings};
use tonic::transport::Channel;
use tonic::{Request, Status};

pub const PASSWORD: &str = "correct horse battery staple";

pub struct TestApp {
    pub grpc_port: u16,
    pub admin_port: u16,
    pub client: UserServiceClient<Channel>,
    pub shutdown: Shutdown,
    pub db: TestDatabase,
    pub auth_keys: KeyPair,
    pub service_keys: KeyPair,
    /// The key the mesh's events are signed with (and the consumer trusts).
    pub event_keys: KeyPair,
    pub admin_email: String,
    pub brokers: String,
    /// What this copy was built from: another copy of the service starts from it.
    pub settings: Settings,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&shop_testkit::kafka_brokers()).await
}

/// Starts the service's own Application code on free ports, with a database of its
/// own and the given broker.
pub async fn spawn_app_with(brokers: &str) -> TestApp {
    spawn_configured(brokers, |_| {}).await
}

/// A copy that shares its revoked tokens with others through the run's Redis.
pub async fn spawn_app_sharing_redis() -> TestApp {
    let redis =
        std::env::var("REDIS_URL").expect("REDIS_URL: run the tests through scripts/with-infra.sh");
    spawn_configured(&shop_testkit::kafka_brokers(), |settings| {
        settings.service.redis_url = Secret::new(redis);
    })
    .await
}

async fn spawn_configured(brokers: &str, configure: impl FnOnce(&mut Settings)) -> TestApp {
    shop_testkit::telemetry();
    let db = TestDatabase::create().await;
    let identity = Identity::new();
    let auth_keys = identity.auth.clone();
    let service_keys = identity.service.clone();
    let event_keys = identity.events.clone();
    let admin_email = format!("admin-{}@example.com", uuid::Uuid::now_v7().simple());
    let mut settings = Settings::default();
    settings.service = identity.settings(settings.service, &db, brokers);
    settings.accounts.auth_private_key = Secret::new(auth_keys.private_pem.clone());
    settings.accounts.bootstrap_admin_email = admin_email.clone();
    settings.accounts.bootstrap_admin_password = Secret::new(PASSWORD);
    configure(&mut settings);
    let (app, client, task, shutdown) = start(&settings).await;
    let app = TestApp {
        grpc_port: app.0,
        admin_port: app.1,
        client,
        shutdown,
        db,
        auth_keys,
        service_keys,
        event_keys,
        admin_email,
        brokers: brokers.into(),
        settings,
        task,
    };
    app.wait_serving().await;
    app
}

type Started = (
    (u16, u16),
    UserServiceClient<Channel>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
    Shutdown,
);

/// Builds and runs the Application from `settings`.
async fn start(settings: &Settings) -> Started {
    let app = Application::build(settings.clone())
        .await
        .expect("application builds");
    let grpc_port = app.grpc_port();
    let admin_port = app.admin_port();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let client = UserServiceClient::connect(format!("http://127.0.0.1:{grpc_port}"))
        .await
        .expect("connect");
    ((grpc_port, admin_port), client, task, shutdown)
}

/// A second copy of a running service: the same database, keys and Redis.
pub struct Copy {
    pub grpc_port: u16,
    pub client: UserServiceClient<Channel>,
    _shutdown: Shutdown,
    _task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Signs in through `client`.
async fn login_with(
    client: &UserServiceClient<Channel>,
    email: &str,
    password: &str,
) -> Result<pb::LoginResponse, Status> {
    client
        .clone()
        .login(pb::LoginRequest {
            email: email.into(),
            password: password.into(),
        })
        .await
        .map(|r| r.into_inner())
}

impl Copy {
    /// An access token this copy signs, for the bootstrap admin.
    pub async fn admin_token(&self, email: &str) -> String {
        login_with(&self.client, email, PASSWORD)
            .await
            .expect("admin login")
            .access_token
    }
}

impl TestApp {
    /// Another copy of this service on ports of its own.
    pub async fn copy(&self) -> Copy {
        self.copy_with(|_| {}).await
    }

    /// Another copy, its settings changed by `configure` (a step of a key rotation).
    pub async fn copy_with(&self, configure: impl FnOnce(&mut Settings)) -> Copy {
        let mut settings = self.settings.clone();
        configure(&mut settings);
        let ((grpc_port, _), client, task, shutdown) = start(&settings).await;
        shop_testkit::wait_serving(grpc_port).await;
        Copy {
            grpc_port,
            client,
            _shutdown: shutdown,
            _task: task,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    pub async fn wait_serving(&self) {
        shop_testkit::wait_serving(self.grpc_port).await;
    }

    pub async fn register(&self, email: &str) -> Result<pb::User, Status> {
        self.client
            .clone()
            .register(pb::RegisterRequest {
                email: email.into(),
                password: PASSWORD.into(),
                display_name: "Test User".into(),
            })
            .await
            .map(|r| r.into_inner().user.expect("user"))
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<pb::LoginResponse, Status> {
        login_with(&self.client, email, password).await
    }

    /// A fresh customer and their access token.
    pub async fn customer(&self) -> (pb::User, String) {
        let email = unique_email();
        let user = self.register(&email).await.expect("register");
        let token = self
            .login(&email, PASSWORD)
            .await
            .expect("login")
            .access_token;
        (user, token)
    }

    pub async fn admin_token(&self) -> String {
        self.login(&self.admin_email, PASSWORD)
            .await
            .expect("admin login")
            .access_token
    }

    pub async fn get_user(&self, user_id: &str, token: Option<&str>) -> Result<pb::User, Status> {
        let mut request = Request::new(pb::GetUserRequest {
            user_id: user_id.into(),
        });
        if let Some(token) = token {
            bearer(&mut request, "authorization", token);
        }
        self.client
            .clone()
            .get_user(request)
            .await
            .map(|r| r.into_inner().user.expect("user"))
    }

    /// A service identity token signed with the key services hold.
    pub fn service_token(&self, name: &str) -> String {
        TokenSigner::for_service(&self.service_keys.private_pem)
            .expect("signer")
            .service_token(name)
            .expect("token")
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.db.url).await.expect("pool")
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        self.task.await.expect("join")
    }
}

pub use shop_testkit::bearer;

pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::now_v7().simple())
}
