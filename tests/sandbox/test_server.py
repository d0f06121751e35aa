"""The HTTP layer: keep-alive, concurrency, chunked bodies, and the command line."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import pytest

from delivery_sandbox.__main__ import main
from devstack.processes import sandbox_env, start_sandbox

SMS_ME = "/smspartner/v1/me?apiKey=sandbox-smspartner-key"
EM_SEND = "/emailmassivo/api/v1/external-mails/send"
EM_MAIL = {
    "mail": {
        "to": {"email": "ann@example.com"},
        "from": {"email": "app@example.test"},
        "subject": "Hi",
        "text": "hello",
    }
}


def read_response(sock_file):
    status = sock_file.readline()
    headers = {}
    while (line := sock_file.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, sock_file.read(int(headers["content-length"]))


def test_keep_alive_serves_many_requests_on_one_connection(sandbox):
    request = f"GET {SMS_ME} HTTP/1.1\r\nHost: sandbox\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=5) as sock:
        sock_file = sock.makefile("rb")
        for _ in range(3):
            sock.sendall(request)
            status, headers, body = read_response(sock_file)
            assert status.startswith(b"HTTP/1.1 200")
            assert json.loads(body)["success"] is True  # Content-Length framed exactly
            assert headers.get("connection") != "close"
        sock_file.close()
    connections = {r["connection"] for r in sandbox.recorder.requests()}
    assert len(connections) == 1


def test_fifty_concurrent_keep_alive_clients(sandbox):
    errors: list[BaseException] = []
    barrier = threading.Barrier(50)
    request = f"GET {SMS_ME} HTTP/1.1\r\nHost: sandbox\r\n\r\n".encode()

    def run() -> None:
        try:
            with socket.create_connection(("127.0.0.1", sandbox.port), timeout=10) as sock:
                sock_file = sock.makefile("rb")
                barrier.wait()  # all 50 connections are open at once
                for _ in range(4):
                    sock.sendall(request)
                    status, _, body = read_response(sock_file)
                    assert status.startswith(b"HTTP/1.1 200"), status
                    assert json.loads(body)["success"] is True
                sock_file.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    records = sandbox.recorder.requests()
    assert len(records) == 200
    assert len({r["connection"] for r in records}) == 50


def test_chunked_request_body_is_read(client):
    def chunks():
        yield json.dumps(EM_MAIL).encode()

    headers = {"X-Api-Key": "sandbox-emailmassivo-key", "Content-Type": "application/json"}
    response = client.post(EM_SEND, content=chunks(), headers=headers)
    assert response.status_code == 200


def test_command_line_rejects_bad_credits():
    with pytest.raises(SystemExit) as exit_info:
        main(["--credits", "postal=5"])
    assert exit_info.value.code == 2


def test_runs_as_its_own_process(tmp_path):
    plan = tmp_path / "faults.json"
    plan.write_text(
        json.dumps({"rules": [{"provider": "emailmassivo", "action": "status", "first_n": 1}]})
    )
    proc = start_sandbox(
        tmp_path, extra_args=["--fault-plan", str(plan), "--credits", "emailmassivo=1", "--quiet"]
    )
    try:
        env = sandbox_env(str(proc.extra["url"]))
        base = env["DELIVERY_EMAILMASSIVO_BASE_URL"]
        headers = {"X-Api-Key": env["DELIVERY_EMAILMASSIVO_API_KEY"]}
        with httpx.Client(timeout=5) as client:
            statuses = []
            for subject in ("a", "b", "c"):  # distinct, so keyless dedupe does not apply
                body = {"mail": {**EM_MAIL["mail"], "subject": subject}}
                url = base + "/api/v1/external-mails/send"
                statuses.append(client.post(url, json=body, headers=headers).status_code)
    finally:
        code = proc.stop()
    assert statuses == [503, 200, 402]  # the plan's fault, the one credit, then no credit
    assert code == 0
    assert "sandbox listening on http://127.0.0.1:" in (tmp_path / "sandbox.out").read_text()
    log = [json.loads(line) for line in (tmp_path / "sandbox-log.jsonl").read_text().splitlines()]
    assert [line["type"] for line in log].count("message") == 1


def test_access_log_hides_keys(make_sandbox, capfd):
    sandbox = make_sandbox(quiet=False)
    with httpx.Client(base_url=sandbox.url) as client:
        client.get(SMS_ME)
        client.get("/voicepartner/v1/me/sandbox-voicepartner-key")
    err = capfd.readouterr().err
    assert '"GET /smspartner/v1/me" 200' in err
    assert '"GET /voicepartner/v1/me/{apiKey}" 200' in err
    assert "sandbox-" not in err
