"""The least a request can ask of the API's server: a WSGI app that answers a constant JSON body (bench/floor.py).

No routing, no auth, no database, no cache, no logging: what is left is gunicorn, gevent and the socket.
"""

BODY = b'{"id":7100000001,"display_name":"Bench","username":null,"profile":{},"wardrobe_version":3}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
