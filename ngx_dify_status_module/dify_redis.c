/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Redis addresses and error classes; see dify_redis.h.
 * Pure logic: no nginx header is included here.
 */


#include <string.h>

#include "dify_redis.h"


typedef struct {
    const char         *word;
    dify_redis_err_e    cls;
} dify_redis_err_word_t;


static int dify_redis_parse_port(const char *p, size_t len, unsigned *port);
static int dify_redis_host_name(const char *p, size_t len);
static int dify_redis_ipv4(const char *p, size_t len);
static int dify_redis_ipv6(const char *p, size_t len);


static const dify_redis_err_word_t  dify_redis_err_words[] = {
    { "NOSCRIPT", DIFY_REDIS_ERR_NOSCRIPT },
    { "NOAUTH", DIFY_REDIS_ERR_NOAUTH },
    { "WRONGPASS", DIFY_REDIS_ERR_WRONGPASS },
    { "NOPERM", DIFY_REDIS_ERR_NOPERM },
    { "OOM", DIFY_REDIS_ERR_OOM },
    { "READONLY", DIFY_REDIS_ERR_READONLY },
    { "LOADING", DIFY_REDIS_ERR_LOADING },
    { "BUSY", DIFY_REDIS_ERR_BUSY },
    { "MASTERDOWN", DIFY_REDIS_ERR_MASTERDOWN },
    { "MOVED", DIFY_REDIS_ERR_CLUSTER },
    { "ASK", DIFY_REDIS_ERR_CLUSTER },
    { "TRYAGAIN", DIFY_REDIS_ERR_CLUSTER },
    { "CROSSSLOT", DIFY_REDIS_ERR_CLUSTER },
    { "CLUSTERDOWN", DIFY_REDIS_ERR_CLUSTER },
    { NULL, DIFY_REDIS_ERR_OTHER }
};


static const char  *dify_redis_err_names[DIFY_REDIS_ERR_N] = {
    "none", "noscript", "noauth", "wrongpass", "noperm", "oom", "readonly",
    "loading", "busy", "masterdown", "cluster", "other"
};


static const char  dify_redis_script_noperm[] =
    "ERR The user executing the script can't run this command";


dify_redis_err_e
dify_redis_error_class(const char *str, size_t len)
{
    size_t                        n, wlen;
    const dify_redis_err_word_t  *w;

    if (str == NULL) {
        return DIFY_REDIS_ERR_OTHER;
    }

    for (n = 0; n < len && str[n] != ' '; n++) { /* void */ }

    for (w = dify_redis_err_words; w->word; w++) {
        wlen = strlen(w->word);

        if (n == wlen && memcmp(str, w->word, wlen) == 0) {
            return w->cls;
        }
    }

    if (len >= sizeof(dify_redis_script_noperm) - 1
        && memcmp(str, dify_redis_script_noperm,
                  sizeof(dify_redis_script_noperm) - 1) == 0)
    {
        return DIFY_REDIS_ERR_NOPERM;
    }

    return DIFY_REDIS_ERR_OTHER;
}


const char *
dify_redis_error_name(dify_redis_err_e cls)
{
    if ((unsigned) cls >= DIFY_REDIS_ERR_N) {
        return "other";
    }

    return dify_redis_err_names[cls];
}


int
dify_redis_parse_addr(const char *s, size_t len, dify_redis_addr_t *addr,
    const char **err)
{
    size_t       i, hlen;
    const char  *p, *colon;

    memset(addr, 0, sizeof(dify_redis_addr_t));

    if (s == NULL || len == 0) {
        *err = "an empty address";
        return -1;
    }

    if (len >= 5 && memcmp(s, "unix:", 5) == 0) {
        addr->type = DIFY_REDIS_ADDR_UNIX;
        addr->host = s + 5;
        addr->host_len = len - 5;

        if (addr->host_len == 0 || addr->host[0] != '/') {
            *err = "a unix socket needs an absolute path";
            return -1;
        }

        if (memchr(addr->host, '\0', addr->host_len) != NULL) {
            *err = "a NUL in the path";
            return -1;
        }

        return 0;
    }

    addr->port = DIFY_REDIS_DEFAULT_PORT;

    if (s[0] == '[') {
        p = memchr(s, ']', len);
        if (p == NULL) {
            *err = "no \"]\" after an IPv6 address";
            return -1;
        }

        addr->type = DIFY_REDIS_ADDR_IPV6;
        addr->host = s + 1;
        addr->host_len = p - s - 1;

        if (!dify_redis_ipv6(addr->host, addr->host_len)) {
            *err = "an invalid IPv6 address";
            return -1;
        }

        p++;

        if (p == s + len) {
            return 0;
        }

        if (*p != ':') {
            *err = "\":port\" expected after \"]\"";
            return -1;
        }

        p++;

        if (dify_redis_parse_port(p, s + len - p, &addr->port) != 0) {
            *err = "an invalid port";
            return -1;
        }

        return 0;
    }

    colon = NULL;

    for (i = 0; i < len; i++) {
        if (s[i] == ':') {
            if (colon != NULL) {
                *err = "an IPv6 address must be written in brackets";
                return -1;
            }

            colon = s + i;
        }
    }

    hlen = colon ? (size_t) (colon - s) : len;

    if (colon != NULL
        && dify_redis_parse_port(colon + 1, s + len - colon - 1, &addr->port)
           != 0)
    {
        *err = "an invalid port";
        return -1;
    }

    addr->host = s;
    addr->host_len = hlen;

    if (dify_redis_ipv4(s, hlen)) {
        addr->type = DIFY_REDIS_ADDR_IPV4;
        return 0;
    }

    if (!dify_redis_host_name(s, hlen)) {
        *err = "an invalid host name";
        return -1;
    }

    addr->type = DIFY_REDIS_ADDR_NAME;

    return 0;
}


static int
dify_redis_parse_port(const char *p, size_t len, unsigned *port)
{
    size_t    i;
    unsigned  n;

    if (len == 0 || len > 5) {
        return -1;
    }

    n = 0;

    for (i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return -1;
        }

        n = n * 10 + (p[i] - '0');
    }

    if (n == 0 || n > 65535) {
        return -1;
    }

    *port = n;

    return 0;
}


static int
dify_redis_host_name(const char *p, size_t len)
{
    size_t  i, label;
    int     c, alpha;

    if (len > 0 && p[len - 1] == '.') {
        len--;
    }

    if (len == 0 || len > 253) {
        return 0;
    }

    label = 0;
    alpha = 0;

    for (i = 0; i < len; i++) {
        c = (unsigned char) p[i];

        if (c == '.') {
            if (label == 0 || p[i - 1] == '-') {
                return 0;
            }

            label = 0;
            continue;
        }

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') {
            alpha = 1;

        } else if (c == '-') {
            if (label == 0) {
                return 0;
            }

        } else if (c < '0' || c > '9') {
            return 0;
        }

        if (++label > 63) {
            return 0;
        }
    }

    /* "1.2.3.999" is no name: a name has a letter somewhere */

    return label > 0 && p[len - 1] != '-' && alpha;
}


static int
dify_redis_ipv4(const char *p, size_t len)
{
    size_t    i, digits;
    unsigned  octet, dots;

    octet = 0;
    digits = 0;
    dots = 0;

    for (i = 0; i < len; i++) {
        if (p[i] == '.') {
            if (digits == 0 || ++dots > 3) {
                return 0;
            }

            octet = 0;
            digits = 0;
            continue;
        }

        if (p[i] < '0' || p[i] > '9' || ++digits > 3) {
            return 0;
        }

        octet = octet * 10 + (p[i] - '0');

        if (octet > 255) {
            return 0;
        }
    }

    return dots == 3 && digits > 0;
}


static int
dify_redis_ipv6(const char *p, size_t len)
{
    size_t  i;
    int     c;

    /* the characters only: the nginx side parses it (ngx_inet6_addr) */

    if (len < 2 || len > 45) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        c = (unsigned char) p[i];

        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')
              || (c >= 'A' && c <= 'F') || c == ':' || c == '.'))
        {
            return 0;
        }
    }

    return memchr(p, ':', len) != NULL;
}


int
dify_redis_sentinel_master(const redisReply *r, const char **host,
    size_t *host_len, unsigned *port)
{
    const redisReply  *h, *p;

    if (r->type == REDIS_REPLY_NIL) {
        return 1;
    }

    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
        return -1;
    }

    h = r->element[0];
    p = r->element[1];

    if (h->type != REDIS_REPLY_STRING || h->len == 0 || h->len > 255
        || memchr(h->str, '\0', h->len) != NULL
        || memchr(h->str, ' ', h->len) != NULL)
    {
        return -1;
    }

    if (p->type == REDIS_REPLY_INTEGER) {
        if (p->integer <= 0 || p->integer > 65535) {
            return -1;
        }

        *port = (unsigned) p->integer;

    } else if (p->type != REDIS_REPLY_STRING
               || dify_redis_parse_port(p->str, p->len, port) != 0)
    {
        return -1;
    }

    *host = h->str;
    *host_len = h->len;

    return 0;
}


int
dify_redis_role_master(const redisReply *r)
{
    const redisReply  *e;

    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1) {
        return 0;
    }

    e = r->element[0];

    return (e->type == REDIS_REPLY_STRING
            && e->len == sizeof("master") - 1
            && memcmp(e->str, "master", sizeof("master") - 1) == 0);
}


int
dify_redis_switch_master(const char *s, size_t len, const char *name,
    size_t name_len, const char **host, size_t *host_len, unsigned *port)
{
    size_t       n, wlen[5];
    const char  *p, *end, *w[5];

    p = s;
    end = s + len;

    for (n = 0; n < 5; n++) {
        while (p < end && *p == ' ') {
            p++;
        }

        w[n] = p;

        while (p < end && *p != ' ') {
            p++;
        }

        wlen[n] = (size_t) (p - w[n]);

        if (wlen[n] == 0) {
            return -1;
        }
    }

    while (p < end && *p == ' ') {
        p++;
    }

    if (p != end) {
        return -1;
    }

    if (wlen[0] != name_len || memcmp(w[0], name, name_len) != 0) {
        return -1;
    }

    if (dify_redis_parse_port(w[4], wlen[4], port) != 0 || wlen[3] > 255) {
        return -1;
    }

    *host = w[3];
    *host_len = wlen[3];

    return 0;
}


static size_t
dify_redis_digits(size_t n)
{
    size_t  d;

    for (d = 1; n >= 10; d++) {
        n /= 10;
    }

    return d;
}


static char *
dify_redis_put_count(char *p, char type, size_t n)
{
    size_t  d, i;

    d = dify_redis_digits(n);

    *p++ = type;

    for (i = d; i > 0; i--) {
        p[i - 1] = (char) ('0' + n % 10);
        n /= 10;
    }

    p += d;
    *p++ = '\r';
    *p++ = '\n';

    return p;
}


size_t
dify_redis_format_len(int argc, const size_t *argvlen)
{
    int     i;
    size_t  len;

    len = 1 + dify_redis_digits((size_t) argc) + 2;

    for (i = 0; i < argc; i++) {
        len += 1 + dify_redis_digits(argvlen[i]) + 2 + argvlen[i] + 2;
    }

    return len;
}


size_t
dify_redis_format(char *buf, int argc, const char **argv,
    const size_t *argvlen)
{
    int    i;
    char  *p;

    p = dify_redis_put_count(buf, '*', (size_t) argc);

    for (i = 0; i < argc; i++) {
        p = dify_redis_put_count(p, '$', argvlen[i]);

        if (argvlen[i]) {
            memcpy(p, argv[i], argvlen[i]);
            p += argvlen[i];
        }

        *p++ = '\r';
        *p++ = '\n';
    }

    return (size_t) (p - buf);
}
