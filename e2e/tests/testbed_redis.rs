//! The test bed's Redis enforces ACLs: a user confined to a key prefix gets
//! NOPERM outside it.

use partnerplane_e2e::{Testbed, unique_name};

#[tokio::test]
async fn an_acl_user_is_confined_to_its_key_prefix() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let admin = redis::Client::open(testbed.redis_admin_url.as_str())?;
    let mut admin = admin.get_multiplexed_async_connection().await?;

    let user = unique_name("smoke");
    let prefix = format!("{user}:");
    let password = "smoke-test-password";
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("reset")
        .arg("on")
        .arg(format!(">{password}"))
        .arg(format!("~{prefix}*"))
        .arg("+@all")
        .arg("-@dangerous")
        .query_async(&mut admin)
        .await?;

    let url = testbed.redis_url_as(&user, password)?;
    let mut confined = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;

    let inside: redis::RedisResult<()> = redis::cmd("SET")
        .arg(format!("{prefix}k"))
        .arg("v")
        .query_async(&mut confined)
        .await;
    let outside: redis::RedisResult<()> = redis::cmd("SET")
        .arg("someone-else:k")
        .arg("v")
        .query_async(&mut confined)
        .await;
    let keys: redis::RedisResult<Vec<String>> =
        redis::cmd("KEYS").arg("*").query_async(&mut confined).await;

    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut admin)
        .await?;
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}k"))
        .query_async(&mut admin)
        .await?;

    inside?;
    let err = outside.expect_err("a key outside the prefix must be refused");
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
    let err = keys.expect_err("KEYS is a dangerous command");
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
    Ok(())
}
