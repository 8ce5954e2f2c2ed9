# The vendors' OAuth endpoints, stubbed for recording the real CLIs' login screens offline: an
# HTTPS proxy that accepts CONNECT, terminates TLS with a certificate from a throwaway CA (given
# to the CLIs via SSL_CERT_FILE / NODE_EXTRA_CA_CERTS), and answers as the vendors' token
# endpoints do. MODE "ok" grants, "deny" refuses (a wrong code).
# usage: vendor_stub.py ok|deny   (listens on 127.0.0.1:18998; needs srv.pem/srv.key here)
import socket, ssl, threading, json, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain('srv.pem','srv.key')
polls = 0
MODE = sys.argv[1] if len(sys.argv)>1 else 'ok'
def log(s): sys.stderr.write(s+"\n"); sys.stderr.flush()
def handle(c):
    f = c.makefile('rb'); line = f.readline(); 
    while f.readline() not in (b'\r\n', b''): pass
    c.sendall(b'HTTP/1.1 200 Connection established\r\n\r\n')
    t = ctx.wrap_socket(c, server_side=True)
    tf = t.makefile('rb')
    while True:
        req = tf.readline()
        if not req: return
        hdrs = {}
        while True:
            h = tf.readline()
            if h in (b'\r\n', b''): break
            k,v = h.decode().split(':',1); hdrs[k.strip().lower()] = v.strip()
        body = tf.read(int(hdrs.get('content-length','0')))
        log(f"{hdrs.get('host')} {req.decode().strip()} {body[:300]!r}")
        path = req.split()[1].decode()
        if path.endswith('/usercode'):
            r = {"device_auth_id":"dev_abc123","user_code":"WXYZ-1234","interval":"5"}; st = b'200 OK'
        elif path.endswith('/deviceauth/token'):
            global polls
            polls += 1
            if MODE == 'deny' and polls >= 2:
                r = {"error":"access_denied"}; st = b'400 Bad Request'
            elif polls >= 2:
                r = {"authorization_code":"ac_fake123","code_challenge":"ch","code_verifier":"ver"}; st = b'200 OK'
            else:
                r = {"error":"authorization_pending"}; st = b'403 Forbidden'
        elif path.startswith('/oauth/token'):
            import base64
            def b64(d): return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b'=').decode()
            claims = {"email":"user@example.com","exp":4102444800,"https://api.openai.com/auth":{"chatgpt_account_id":"acct_fake","chatgpt_plan_type":"plus","chatgpt_user_id":"user_fake"}}
            jwt = b64({"alg":"none","typ":"JWT"})+"."+b64(claims)+".sig"
            r = {"id_token":jwt,"access_token":jwt,"refresh_token":"rt_fake_refresh","expires_in":3600}; st = b'200 OK'
        elif 'claude' in hdrs.get('host','') or 'anthropic' in hdrs.get('host',''):
            if 'oauth/token' in path:
                if MODE == 'deny':
                    r = {"error":"invalid_grant","error_description":"Invalid 'code' in request."}; st = b'400 Bad Request'
                else:
                    r = {"access_token":"sk-ant-oat01-FAKEACCESS","refresh_token":"sk-ant-ort01-FAKEREFRESH","expires_in":28800,"scope":"user:inference user:profile user:sessions:claude_code","token_type":"Bearer","account":{"uuid":"11111111-2222-3333-4444-555555555555","email_address":"user@example.com"},"organization":{"uuid":"66666666-7777-8888-9999-000000000000","name":"Example"}}; st = b'200 OK'
            else:
                r = {}; st = b'200 OK'
        elif 'google' in hdrs.get('host',''):
            if path.startswith('/token'):
                if MODE == 'deny':
                    r = {"error":"invalid_grant","error_description":"Malformed auth code."}; st = b'400 Bad Request'
                else:
                    r = {"access_token":"ya29.FAKEACCESS","refresh_token":"1//FAKEREFRESH","scope":"https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email openid","token_type":"Bearer","expires_in":3599}; st = b'200 OK'
            elif 'userinfo' in path:
                r = {"id":"1234","email":"user@example.com","verified_email":True}; st = b'200 OK'
            else:
                r = {}; st = b'200 OK'
        else:
            r = {"error":"not_found"}; st = b'404 Not Found'
        b = json.dumps(r).encode()
        t.sendall(b'HTTP/1.1 '+st+b'\r\ncontent-type: application/json\r\ncontent-length: '+str(len(b)).encode()+b'\r\n\r\n'+b)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1',18998)); s.listen(8)
while True:
    c,_ = s.accept(); threading.Thread(target=handle, args=(c,), daemon=True).start()
