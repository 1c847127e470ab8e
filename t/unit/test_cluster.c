/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Unit tests of dify_cluster.c: the hash slot of a key against what
 * Redis's own CLUSTER KEYSLOT answered (cluster_keyslots.h), the
 * redirections as Redis 7.0 sends them, and CLUSTER SLOTS replies
 * (built with hiredis's own reader from RESP text).
 */


#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "dify_cluster.h"
#include "cluster_keyslots.h"


#define S(s)  (s), sizeof(s) - 1


static void
test_crc16(void **state)
{
    (void) state;

    /* the check value of CRC-16/XMODEM */
    assert_int_equal(dify_cluster_crc16(S("123456789")), 0x31c3);
    assert_int_equal(dify_cluster_crc16(S("")), 0);
}


static void
test_keyslot(void **state)
{
    size_t  i;

    (void) state;

    for (i = 0; i < sizeof(cluster_keyslots) / sizeof(cluster_keyslots[0]);
         i++)
    {
        if (dify_cluster_keyslot(cluster_keyslots[i].key,
                                 cluster_keyslots[i].len)
            != cluster_keyslots[i].slot)
        {
            fail_msg("key %zu: %u, Redis says %u", i,
                     dify_cluster_keyslot(cluster_keyslots[i].key,
                                          cluster_keyslots[i].len),
                     cluster_keyslots[i].slot);
        }
    }

    /* the hash tag alone decides */
    assert_int_equal(dify_cluster_keyslot(S("x{abc}:tat")),
                     dify_cluster_keyslot(S("y{abc}:limit")));
    assert_int_equal(dify_cluster_keyslot(S("{abc}")),
                     dify_cluster_keyslot(S("abc")));
}


static void
redirect_ok(const char *s, dify_cluster_redirect_e kind, unsigned slot,
    const char *host, unsigned port)
{
    dify_cluster_redirect_t  rd;

    memset(&rd, 0, sizeof(rd));

    if (dify_cluster_parse_redirect(s, strlen(s), &rd) != kind) {
        fail_msg("\"%s\" not parsed", s);
    }

    assert_int_equal(rd.kind, kind);
    assert_int_equal(rd.slot, slot);
    assert_int_equal(rd.host_len, strlen(host));
    assert_memory_equal(rd.host, host, rd.host_len);
    assert_int_equal(rd.port, port);
}


static void
redirect_bad(const char *s)
{
    dify_cluster_redirect_t  rd;

    if (dify_cluster_parse_redirect(s, strlen(s), &rd)
        != DIFY_CLUSTER_REDIRECT_NONE)
    {
        fail_msg("\"%s\" accepted", s);
    }
}


static void
test_redirect(void **state)
{
    (void) state;

    redirect_ok("MOVED 3999 127.0.0.1:6381", DIFY_CLUSTER_REDIRECT_MOVED,
                3999, "127.0.0.1", 6381);
    redirect_ok("ASK 12182 127.0.0.1:17001", DIFY_CLUSTER_REDIRECT_ASK,
                12182, "127.0.0.1", 17001);
    redirect_ok("MOVED 0 ::1:7000", DIFY_CLUSTER_REDIRECT_MOVED, 0, "::1",
                7000);
    redirect_ok("MOVED 16383 redis-2.example.com:6379",
                DIFY_CLUSTER_REDIRECT_MOVED, 16383, "redis-2.example.com",
                6379);
    /* an unknown endpoint: the host asked */
    redirect_ok("MOVED 5 :6380", DIFY_CLUSTER_REDIRECT_MOVED, 5, "", 6380);

    redirect_bad("");
    redirect_bad("MOVED");
    redirect_bad("MOVED ");
    redirect_bad("MOVED 16384 127.0.0.1:6379");
    redirect_bad("MOVED x 127.0.0.1:6379");
    redirect_bad("MOVED 1 127.0.0.1");
    redirect_bad("MOVED 1 127.0.0.1:");
    redirect_bad("MOVED 1 127.0.0.1:0");
    redirect_bad("MOVED 1 127.0.0.1:65536");
    redirect_bad("MOVED 1 127.0.0.1:63a");
    redirect_bad("MOVED 1 a b:1");
    redirect_bad("ASKING");
    redirect_bad("TRYAGAIN Multiple keys request during rehashing of slot");
    redirect_bad("CLUSTERDOWN The cluster is down");
    redirect_bad("ERR MOVED 1 a:1");
}


static redisReply *
reply_of(const char *resp, size_t len)
{
    void         *reply;
    redisReader  *rd;

    rd = redisReaderCreate();
    assert_non_null(rd);

    assert_int_equal(redisReaderFeed(rd, resp, len), REDIS_OK);
    assert_int_equal(redisReaderGetReply(rd, &reply), REDIS_OK);
    assert_non_null(reply);

    redisReaderFree(rd);

    return reply;
}


static void
test_slots(void **state)
{
    int                    n;
    redisReply            *reply;
    dify_cluster_range_t   r[4];

    (void) state;

    /* as Redis 7.0.15 sends it: the primary, then a replica */

    reply = reply_of(S(
        "*2\r\n"
        "*4\r\n:0\r\n:5460\r\n"
        "*4\r\n$9\r\n127.0.0.1\r\n:27001\r\n$3\r\naaa\r\n*0\r\n"
        "*4\r\n$9\r\n127.0.0.1\r\n:27004\r\n$3\r\nbbb\r\n*0\r\n"
        "*3\r\n:5461\r\n:16383\r\n"
        "*4\r\n$-1\r\n:27002\r\n$3\r\nccc\r\n*0\r\n"));

    n = dify_cluster_parse_slots(reply, r, 4);
    assert_int_equal(n, 2);
    assert_int_equal(r[0].start, 0);
    assert_int_equal(r[0].end, 5460);
    assert_int_equal(r[0].port, 27001);
    assert_int_equal(r[0].host_len, 9);
    assert_memory_equal(r[0].host, "127.0.0.1", 9);
    assert_int_equal(r[1].start, 5461);
    assert_int_equal(r[1].end, 16383);
    assert_int_equal(r[1].host_len, 0);
    assert_int_equal(r[1].port, 27002);

    /* no room */
    assert_int_equal(dify_cluster_parse_slots(reply, r, 1), -1);

    freeReplyObject(reply);

    /* an unknown hostname is left out */

    reply = reply_of(S(
        "*1\r\n*3\r\n:0\r\n:1\r\n"
        "*4\r\n$1\r\n?\r\n:7000\r\n$1\r\na\r\n*0\r\n"));
    assert_int_equal(dify_cluster_parse_slots(reply, r, 4), 0);
    freeReplyObject(reply);

    /* not a slot map */

    reply = reply_of(S("-ERR This instance has cluster support disabled\r\n"));
    assert_int_equal(dify_cluster_parse_slots(reply, r, 4), -1);
    freeReplyObject(reply);

    reply = reply_of(S("*1\r\n*3\r\n:5\r\n:4\r\n*2\r\n$1\r\na\r\n:1\r\n"));
    assert_int_equal(dify_cluster_parse_slots(reply, r, 4), -1);
    freeReplyObject(reply);

    reply = reply_of(S("*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\na\r\n:1\r\n"));
    assert_int_equal(dify_cluster_parse_slots(reply, r, 4), -1);
    freeReplyObject(reply);

    reply = reply_of(S("*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\na\r\n:0\r\n"));
    assert_int_equal(dify_cluster_parse_slots(reply, r, 4), -1);
    freeReplyObject(reply);

    reply = reply_of(S("*1\r\n*2\r\n:0\r\n:1\r\n"));
    assert_int_equal(dify_cluster_parse_slots(reply, r, 4), -1);
    freeReplyObject(reply);

    reply = reply_of(S("*1\r\n*3\r\n:0\r\n:1\r\n*1\r\n$1\r\na\r\n"));
    assert_int_equal(dify_cluster_parse_slots(reply, r, 4), -1);
    freeReplyObject(reply);

    reply = reply_of(S("*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n:1\r\n:1\r\n"));
    assert_int_equal(dify_cluster_parse_slots(reply, r, 4), -1);
    freeReplyObject(reply);

    /* an empty map: a cluster with no slot assigned */

    reply = reply_of(S("*0\r\n"));
    assert_int_equal(dify_cluster_parse_slots(reply, r, 4), 0);
    freeReplyObject(reply);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc16),
        cmocka_unit_test(test_keyslot),
        cmocka_unit_test(test_redirect),
        cmocka_unit_test(test_slots),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
