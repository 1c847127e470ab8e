/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * libFuzzer harness for dify_redis.c.  The input is an address for
 * dify_redis_parse_addr(): an accepted one must point inside the input
 * and satisfy what the nginx glue relies on (a port in range, a host
 * with no NUL, ':' or brackets unless IPv6, a unix path starting with
 * '/').  The same bytes are an error reply's text for
 * dify_redis_error_class(), whose class must have a name; a
 * "+switch-master" payload, whose new address must lie inside the input
 * with a port in range; and RESP bytes, whose first reply, if any, goes
 * to the Sentinel reply parsers.
 */


#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "dify_redis.h"


#define dify_fuzz_assert(c)                                                  \
    do {                                                                     \
        if (!(c)) {                                                          \
            __builtin_trap();                                                \
        }                                                                    \
    } while (0)


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                 rc;
    void               *reply;
    size_t              i, hlen;
    unsigned            port;
    const char         *s, *err, *name, *h;
    redisReader        *rd;
    dify_redis_err_e    cls;
    dify_redis_addr_t   a;

    s = (const char *) data;
    err = NULL;

    if (dify_redis_parse_addr(s, size, &a, &err) == 0) {
        dify_fuzz_assert(a.host >= s && a.host + a.host_len <= s + size);
        dify_fuzz_assert(a.host_len > 0);
        dify_fuzz_assert(memchr(a.host, '\0', a.host_len) == NULL);

        if (a.type == DIFY_REDIS_ADDR_UNIX) {
            dify_fuzz_assert(a.host[0] == '/' && a.port == 0);

        } else {
            dify_fuzz_assert(a.port >= 1 && a.port <= 65535);
            dify_fuzz_assert(memchr(a.host, '[', a.host_len) == NULL);
            dify_fuzz_assert(memchr(a.host, ']', a.host_len) == NULL);

            if (a.type != DIFY_REDIS_ADDR_IPV6) {
                dify_fuzz_assert(memchr(a.host, ':', a.host_len) == NULL);
            }

            if (a.type == DIFY_REDIS_ADDR_NAME) {
                dify_fuzz_assert(a.host_len <= 254);
            }
        }

    } else {
        dify_fuzz_assert(err != NULL);
    }

    cls = dify_redis_error_class(s, size);
    dify_fuzz_assert(cls > DIFY_REDIS_ERR_NONE && cls < DIFY_REDIS_ERR_N);

    name = dify_redis_error_name(cls);
    dify_fuzz_assert(name != NULL && strlen(name) > 0);

    if (dify_redis_switch_master(s, size, "mymaster", 8, &h, &hlen, &port)
        == 0)
    {
        /* the first word, after any spaces, is the name */
        for (i = 0; i < size && s[i] == ' '; i++) { /* void */ }
        dify_fuzz_assert(size - i > 8 && memcmp(s + i, "mymaster", 8) == 0
                         && s[i + 8] == ' ');
        dify_fuzz_assert(h >= s && h + hlen <= s + size);
        dify_fuzz_assert(hlen > 0 && hlen <= 255);
        dify_fuzz_assert(memchr(h, ' ', hlen) == NULL);
        dify_fuzz_assert(port >= 1 && port <= 65535);
    }

    rd = redisReaderCreate();
    if (rd == NULL) {
        return 0;
    }

    reply = NULL;

    if (redisReaderFeed(rd, s, size) == REDIS_OK
        && redisReaderGetReply(rd, &reply) == REDIS_OK
        && reply != NULL)
    {
        rc = dify_redis_sentinel_master(reply, &h, &hlen, &port);
        dify_fuzz_assert(rc >= -1 && rc <= 1);

        if (rc == 0) {
            dify_fuzz_assert(hlen > 0 && hlen <= 255);
            dify_fuzz_assert(memchr(h, '\0', hlen) == NULL);
            dify_fuzz_assert(port >= 1 && port <= 65535);
        }

        rc = dify_redis_role_master(reply);
        dify_fuzz_assert(rc == 0 || rc == 1);
    }

    if (reply != NULL) {
        freeReplyObject(reply);
    }

    redisReaderFree(rd);

    return 0;
}
