/*
 * host_url.h - broker URLs for the host device: mqtt://user:pass@host:port
 */
#ifndef FLEET_HOST_URL_H
#define FLEET_HOST_URL_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char host[256];
    int port;
    bool has_user;
    char user[256];
    bool has_pass;
    char pass[256];
} host_url_t;

/*
 * Parses mqtt://[user[:pass]@]host[:port][/] (also tcp://). User and password are
 * percent-decoded; an IPv6 host is written in brackets. mqtts:// is refused: this
 * build has no TLS. On failure, why says what is wrong.
 */
bool host_url_parse(const char *url, host_url_t *out, char *why, size_t why_cap);

#endif
