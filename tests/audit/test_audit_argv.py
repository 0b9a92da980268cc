"""What the implicit session records about its process: argv, with credentials masked by the header rule."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from datapipelines.remote import mask_secrets
from datapipelines.sinks.audit import AuditRecorder
from datapipelines.sinks.audit.schema import masked_argv

SECRETS = ("tok-1111", "pw-2222", "key-3333", "url-4444", "query-5555", "env-6666", "auth-7777")
ARGS = [
    "--api-token=tok-1111",
    "--password",
    "pw-2222",
    "--verbose",
    "--secret-key",
    "key-3333",
    "--url=redis://user:url-4444@127.0.0.1:6379/0",
    "https://api.example.com/v1?city=Oslo&api_key=query-5555",
    "DB_PASSWORD=env-6666",
    "--no-auth",
    "--auth-header",
    "auth-7777",
    "--city",
    "Oslo",
]

# argv: directory, then the arguments to record. One record outside any session.
CHILD = textwrap.dedent(
    """
    import sys
    from datapipelines.remote import request_for, response_for
    from datapipelines.sinks.audit import AuditRecorder

    with AuditRecorder(sys.argv[1]) as recorder:
        recorder.record(response_for(request_for({"url": "mem://a"}), payload=b"a", status_code=200))
    """
)


def test_the_implicit_session_records_argv_without_its_secrets(tmp_path):
    directory = tmp_path / "audit"
    subprocess.run([sys.executable, "-c", CHILD, str(directory), *ARGS], check=True, timeout=60)
    with open(directory / "audit.sqlite", "rb") as database:
        stored = database.read()
    assert [secret for secret in SECRETS if secret.encode() in stored] == []
    with AuditRecorder(directory) as recorder:
        (session,) = recorder.sessions()
    assert session["implicit"] and session["meta"] == {
        "argv": [
            "-c",
            str(directory),
            "--api-token=<redacted>",
            "--password",
            "<redacted>",
            "--verbose",
            "--secret-key",
            "<redacted>",
            "--url=redis://user:<redacted>@127.0.0.1:6379/0",
            "https://api.example.com/v1?city=Oslo&api_key=<redacted>",
            "DB_PASSWORD=<redacted>",
            "--no-auth",
            "--auth-header",
            "<redacted>",
            "--city",
            "Oslo",
        ]
    }
    json.dumps(session)  # plain data


def test_a_flag_after_a_secret_flag_is_not_taken_for_its_value():
    assert masked_argv(["--auth", "--token", "t", "x"]) == ["--auth", "--token", "<redacted>", "x"]
    assert masked_argv(["prog", "input.csv"]) == ["prog", "input.csv"]


def test_headers_and_arguments_share_one_rule():
    headers = {"Authorization": "a", "X-Auth-Token": "b", "X-Api-Key": "c", "Cookie": "d", "Accept": "e"}
    assert mask_secrets(headers) == {
        "Authorization": "<redacted>",
        "X-Auth-Token": "<redacted>",
        "X-Api-Key": "<redacted>",
        "Cookie": "<redacted>",
        "Accept": "e",
    }
    assert masked_argv([f"--{name}=v" for name in headers]) == [
        "--Authorization=<redacted>",
        "--X-Auth-Token=<redacted>",
        "--X-Api-Key=<redacted>",
        "--Cookie=<redacted>",
        "--Accept=v",
    ]
