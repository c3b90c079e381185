/*
 * host_url.c - the --broker URL parser.
 */
#include "host_url.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *TAG = "host_url";

static bool fail(char *why, size_t cap, const char *msg)
{
    (void)snprintf(why, cap, "%s: %s", TAG, msg);
    return false;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Percent-decodes n bytes of s into out (cap bytes); false on a bad escape or overflow. */
static bool pct_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= n) {
                return false; /* "%" or "%4" at the end */
            }
            int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                return false;
            }
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        if (k + 1 >= cap) {
            return false;
        }
        out[k++] = c;
    }
    out[k] = '\0';
    return true;
}

bool host_url_parse(const char *url, host_url_t *out, char *why, size_t why_cap)
{
    memset(out, 0, sizeof *out);
    out->port = 1883;
    const char *p;
    if (strncmp(url, "mqtt://", 7) == 0) {
        p = url + 7;
    } else if (strncmp(url, "tcp://", 6) == 0) {
        p = url + 6;
    } else if (strncmp(url, "mqtts://", 8) == 0 || strncmp(url, "ssl://", 6) == 0) {
        return fail(why, why_cap, "TLS URLs are not supported by the host device");
    } else {
        return fail(why, why_cap, "expected mqtt://[user[:pass]@]host[:port]");
    }
    /* The authority ends at the first '/' (a bare trailing slash is allowed). */
    const char *end = strchr(p, '/');
    if (end != NULL && end[1] != '\0') {
        return fail(why, why_cap, "a broker URL has no path");
    }
    if (end == NULL) {
        end = p + strlen(p);
    }
    /* Userinfo: up to the last '@' (a password may contain a raw '@'). */
    const char *at = NULL;
    for (const char *q = p; q < end; q++) {
        if (*q == '@') {
            at = q;
        }
    }
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        size_t ulen = colon != NULL ? (size_t)(colon - p) : (size_t)(at - p);
        if (ulen == 0 || !pct_decode(p, ulen, out->user, sizeof out->user)) {
            return fail(why, why_cap, "bad user name in the URL");
        }
        out->has_user = true;
        if (colon != NULL) {
            if (!pct_decode(colon + 1, (size_t)(at - colon - 1), out->pass, sizeof out->pass)) {
                return fail(why, why_cap, "bad password in the URL");
            }
            out->has_pass = true;
        }
        p = at + 1;
    }
    const char *host_end;
    const char *port_start = NULL;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (rb == NULL) {
            return fail(why, why_cap, "unclosed '[' in the host");
        }
        if (rb + 1 < end && rb[1] != ':') {
            return fail(why, why_cap, "junk after the IPv6 host");
        }
        port_start = rb + 1 < end ? rb + 2 : NULL;
        p++;
        host_end = rb;
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        host_end = colon != NULL ? colon : end;
        port_start = colon != NULL ? colon + 1 : NULL;
    }
    size_t hlen = (size_t)(host_end - p);
    if (hlen == 0 || hlen >= sizeof out->host) {
        return fail(why, why_cap, "missing or overlong host");
    }
    memcpy(out->host, p, hlen);
    out->host[hlen] = '\0';
    if (port_start != NULL) {
        char digits[8];
        size_t dlen = (size_t)(end - port_start);
        if (dlen == 0 || dlen >= sizeof digits) {
            return fail(why, why_cap, "bad port");
        }
        memcpy(digits, port_start, dlen);
        digits[dlen] = '\0';
        char *stop;
        long port = strtol(digits, &stop, 10);
        if (*stop != '\0' || port < 1 || port > 65535) {
            return fail(why, why_cap, "bad port");
        }
        out->port = (int)port;
    }
    return true;
}
