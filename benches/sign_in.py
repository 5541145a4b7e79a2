"""Signs a new staff account in for the load scripts (load.sh, scale.sh, two_instances.sh).

    python3 benches/sign_in.py SET_PASSWORD_LINK BASE_URL EMAIL

Sets the account's password through its one-time link, signs in at BASE_URL, and prints the
session's cookies as one `Cookie:` header value for wrk.
"""
import html
import http.cookiejar
import re
import sys
import urllib.parse
import urllib.request

link, base, email = sys.argv[1], sys.argv[2], sys.argv[3]
jar = http.cookiejar.CookieJar()
web = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))


def csrf(url):
    page = web.open(url).read().decode()
    return html.unescape(re.search(r'name="csrf" value="([^"]*)"', page).group(1))


password = "river otter lantern"
form = {"csrf": csrf(link), "password": password, "confirm": password}
web.open(link, urllib.parse.urlencode(form).encode())
form = {"csrf": csrf(base + "/sign-in"), "email": email, "password": password}
web.open(base + "/sign-in", urllib.parse.urlencode(form).encode())
print("; ".join(f"{c.name}={c.value}" for c in jar))
