"""Ray's auth token on a machine that never had one."""
import os


def test_a_fresh_machine_gets_a_private_ray_token_before_ray_start(tmp_path):
    """`ray start --head` refuses to run with token auth and no token; start makes one, owner-only, once."""
    from modelpool.cluster.runtime import ensure_ray_token

    env = {**os.environ, "HOME": str(tmp_path), "RAY_AUTH_MODE": "token"}
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    ensure_ray_token(env)
    token_file = tmp_path / ".ray" / "auth_token"
    token = token_file.read_text()
    assert len(token) >= 32 and token_file.stat().st_mode & 0o777 == 0o600
    ensure_ray_token(env)
    assert token_file.read_text() == token, "an existing token must be kept (every node shares it)"
