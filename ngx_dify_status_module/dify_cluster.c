
/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Redis Cluster's pure parts: hash slots, redirections, slot maps.
 * Pure logic: no nginx header is included here.
 */


#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "dify_cluster.h"


static int dify_cluster_number(const char *p, const char *last,
    unsigned max, unsigned *n);


uint16_t
dify_cluster_crc16(const char *buf, size_t len)
{
    int       i;
    size_t    k;
    uint16_t  crc;

    crc = 0;

    for (k = 0; k < len; k++) {
        crc ^= (uint16_t) ((unsigned char) buf[k] << 8);

        for (i = 0; i < 8; i++) {
            if (crc & 0x8000) {
                crc = (uint16_t) ((crc << 1) ^ 0x1021);

            } else {
                crc = (uint16_t) (crc << 1);
            }
        }
    }

    return crc;
}


unsigned
dify_cluster_keyslot(const char *key, size_t len)
{
    size_t  s, e;

    for (s = 0; s < len; s++) {
        if (key[s] == '{') {
            break;
        }
    }

    if (s == len) {
        return dify_cluster_crc16(key, len) & (DIFY_CLUSTER_SLOTS - 1);
    }

    for (e = s + 1; e < len; e++) {
        if (key[e] == '}') {
            break;
        }
    }

    /* no '}', or "{}": the whole key */

    if (e == len || e == s + 1) {
        return dify_cluster_crc16(key, len) & (DIFY_CLUSTER_SLOTS - 1);
    }

    return dify_cluster_crc16(key + s + 1, e - s - 1)
           & (DIFY_CLUSTER_SLOTS - 1);
}


dify_cluster_redirect_e
dify_cluster_parse_redirect(const char *str, size_t len,
    dify_cluster_redirect_t *rd)
{
    const char               *p, *q, *last, *sp, *colon;
    dify_cluster_redirect_e   kind;

    if (str == NULL) {
        return DIFY_CLUSTER_REDIRECT_NONE;
    }

    last = str + len;

    if (len > 6 && memcmp(str, "MOVED ", 6) == 0) {
        kind = DIFY_CLUSTER_REDIRECT_MOVED;
        p = str + 6;

    } else if (len > 4 && memcmp(str, "ASK ", 4) == 0) {
        kind = DIFY_CLUSTER_REDIRECT_ASK;
        p = str + 4;

    } else {
        return DIFY_CLUSTER_REDIRECT_NONE;
    }

    sp = memchr(p, ' ', last - p);
    if (sp == NULL) {
        return DIFY_CLUSTER_REDIRECT_NONE;
    }

    if (dify_cluster_number(p, sp, DIFY_CLUSTER_SLOTS - 1, &rd->slot) != 0) {
        return DIFY_CLUSTER_REDIRECT_NONE;
    }

    p = sp + 1;

    /* the port follows the last ':', an IPv6 address has its own */

    colon = NULL;

    for (q = last; q > p; q--) {
        if (q[-1] == ':') {
            colon = q - 1;
            break;
        }
    }

    if (colon == NULL) {
        return DIFY_CLUSTER_REDIRECT_NONE;
    }

    if (dify_cluster_number(colon + 1, last, 65535, &rd->port) != 0
        || rd->port == 0)
    {
        return DIFY_CLUSTER_REDIRECT_NONE;
    }

    if (memchr(p, ' ', colon - p) != NULL) {
        return DIFY_CLUSTER_REDIRECT_NONE;
    }

    rd->host = p;
    rd->host_len = colon - p;
    rd->kind = kind;

    return kind;
}


int
dify_cluster_parse_slots(const redisReply *reply,
    dify_cluster_range_t *ranges, size_t n)
{
    size_t                 i, k;
    long long              start, end, port;
    redisReply            *r, *node, *host;
    dify_cluster_range_t  *range;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        return -1;
    }

    k = 0;

    for (i = 0; i < reply->elements; i++) {
        r = reply->element[i];

        /* [start, end, primary, replicas...] */

        if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 3
            || r->element[0]->type != REDIS_REPLY_INTEGER
            || r->element[1]->type != REDIS_REPLY_INTEGER
            || r->element[2]->type != REDIS_REPLY_ARRAY)
        {
            return -1;
        }

        start = r->element[0]->integer;
        end = r->element[1]->integer;

        if (start < 0 || end < start || end >= DIFY_CLUSTER_SLOTS) {
            return -1;
        }

        /* the primary: [endpoint, port, id, ...] */

        node = r->element[2];

        if (node->elements < 2
            || node->element[1]->type != REDIS_REPLY_INTEGER)
        {
            return -1;
        }

        host = node->element[0];
        port = node->element[1]->integer;

        if (port <= 0 || port > 65535) {
            return -1;
        }

        if (host->type != REDIS_REPLY_STRING
            && host->type != REDIS_REPLY_NIL)
        {
            return -1;
        }

        if (host->type == REDIS_REPLY_STRING
            && host->len == 1 && host->str[0] == '?')
        {
            continue;
        }

        if (k == n) {
            return -1;
        }

        range = &ranges[k++];

        range->start = (unsigned) start;
        range->end = (unsigned) end;
        range->port = (unsigned) port;

        if (host->type == REDIS_REPLY_NIL) {
            range->host = "";
            range->host_len = 0;

        } else {
            range->host = host->str;
            range->host_len = host->len;
        }
    }

    return (int) k;
}


/* a decimal number of 1 to 5 digits, at most max */

static int
dify_cluster_number(const char *p, const char *last, unsigned max,
    unsigned *n)
{
    unsigned  v;

    if (p == last || last - p > 5) {
        return -1;
    }

    v = 0;

    for ( /* void */ ; p < last; p++) {
        if (*p < '0' || *p > '9') {
            return -1;
        }

        v = v * 10 + (*p - '0');
    }

    if (v > max) {
        return -1;
    }

    *n = v;

    return 0;
}
