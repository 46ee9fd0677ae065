"""The nginx configuration the gateway test runs (README.md shows its two locations; tests/system/test_docs.py checks).

Formatted with ``tmp`` (nginx's working directory), ``port`` (the gateway), ``api_port`` (the protected API)
and ``validator`` (the validator's base URL).
"""

from __future__ import annotations

CONF = """
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /_jwtwatch {{
            internal;
            proxy_pass {validator}/v1/validate;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Forwarded-Method $request_method;
            proxy_set_header X-Forwarded-Uri $request_uri;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
        location /api/ {{
            auth_request /_jwtwatch;
            auth_request_set $subject $upstream_http_x_auth_subject;
            proxy_set_header X-Subject $subject;
            proxy_pass http://127.0.0.1:{api_port};
        }}
    }}
    server {{  # the protected API: it only ever sees requests the validator let through
        listen 127.0.0.1:{api_port};
        location / {{ return 200 "hello $http_x_subject\\n"; }}
    }}
}}
"""
