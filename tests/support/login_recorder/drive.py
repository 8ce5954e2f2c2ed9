import os, pty, sys, time, select, json
# Runs a CLI under a PTY, records every byte it prints, and answers its prompt once.
# usage: drive.py OUT PROMPT_SUBSTR CODE TIMEOUT -- argv...
#   CODE "-" answers nothing; "STATE" in CODE is replaced by the state= of the printed URL.
out, prompt, code, tmo = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
argv = sys.argv[6:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
buf = b''; sent = False; start = time.time()
while time.time() - start < tmo:
    r,_,_ = select.select([fd],[],[],0.2)
    if r:
        try: d = os.read(fd, 65536)
        except OSError: break
        if not d: break
        buf += d
    if not sent and prompt.encode() in buf and code != '-':
        time.sleep(0.5); import re; m=re.search(rb'state=([A-Za-z0-9_-]+)', buf); c=code.replace('STATE', m.group(1).decode() if m else 'none'); os.write(fd, c.encode() + b'\r'); sent = True
try:
    p, st = os.waitpid(pid, os.WNOHANG)
except ChildProcessError: st = None
open(out,'wb').write(buf)
print("status", st, "bytes", len(buf))
