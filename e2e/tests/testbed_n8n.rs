//! The test bed's n8n: the pinned version, on a database of its own in the
//! test bed's PostgreSQL, with the owner's API key answering its public API
//! (and a wrong key refused), and the operator's configuration naming both.

use partnerplane_e2e::n8n::N8n;
use partnerplane_e2e::{Testbed, repo_root};
use reqwest::Method;
use tokio_postgres::NoTls;

#[tokio::test]
async fn n8n_runs_on_its_own_database_and_answers_the_operators_key() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let n8n = N8n::new(&testbed)?;

    let pinned: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        repo_root().join("e2e/testbed/n8n/package.json"),
    )?)?;
    let installed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        repo_root().join("e2e/.testbed/n8n/node_modules/n8n/package.json"),
    )?)?;
    assert_eq!(installed["version"], pinned["dependencies"]["n8n"]);

    let page = n8n
        .call(Method::GET, "workflows?limit=1", None)
        .await?
        .expect("the API answers");
    assert!(page["data"].is_array(), "{page}");
    let refused = reqwest::Client::new()
        .get(format!("{}/api/v1/workflows", n8n.url))
        .header("X-N8N-API-KEY", "not-the-key")
        .send()
        .await?
        .status();
    assert_eq!(refused, 401);

    let (pg, connection) = tokio_postgres::connect(&testbed.pg_admin_dsn, NoTls).await?;
    tokio::spawn(connection);
    let owner: String = pg
        .query_one(
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = 'n8n'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(owner, "n8n", "a database and role of its own");
    let connected: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'n8n' AND usename = 'n8n'",
            &[],
        )
        .await?
        .get(0);
    assert!(connected > 0, "n8n keeps its state there");

    let config = std::fs::read_to_string(repo_root().join("e2e/.testbed/operator.yaml"))?;
    assert!(
        config.contains(&format!("url: {}", n8n.url)) && config.contains("key: n8n-api-key"),
        "the operator's configuration names n8n and its key's Secret:\n{config}"
    );
    Ok(())
}
