/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Unit tests of dify_redis.c: the address forms dify_status_redis
 * takes, the classes of Redis error replies (texts as Redis 7.0
 * sends them), and the replies of Sentinel (bytes as Redis 7.0.15's
 * Sentinel sends them, parsed by hiredis).
 */


#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "dify_redis.h"


#define S(s)  (s), sizeof(s) - 1


static void
addr_ok(const char *s, dify_redis_addr_e type, const char *host,
    unsigned port)
{
    const char         *err;
    dify_redis_addr_t   a;

    err = NULL;

    if (dify_redis_parse_addr(s, strlen(s), &a, &err) != 0) {
        fail_msg("\"%s\" refused: %s", s, err);
    }

    assert_int_equal(a.type, type);
    assert_int_equal(a.host_len, strlen(host));
    assert_memory_equal(a.host, host, a.host_len);
    assert_int_equal(a.port, port);
}


static void
addr_bad(const char *s)
{
    const char         *err;
    dify_redis_addr_t   a;

    err = NULL;

    if (dify_redis_parse_addr(s, strlen(s), &a, &err) == 0) {
        fail_msg("\"%s\" accepted", s);
    }

    assert_non_null(err);
}


static void
test_addresses(void **state)
{
    (void) state;

    addr_ok("redis:6379", DIFY_REDIS_ADDR_NAME, "redis", 6379);
    addr_ok("redis", DIFY_REDIS_ADDR_NAME, "redis", 6379);
    addr_ok("my-cache.abc123.ng.0001.euw1.cache.amazonaws.com:6380",
            DIFY_REDIS_ADDR_NAME,
            "my-cache.abc123.ng.0001.euw1.cache.amazonaws.com", 6380);
    addr_ok("redis.local.:7000", DIFY_REDIS_ADDR_NAME, "redis.local.", 7000);
    addr_ok("dify_redis_1:6379", DIFY_REDIS_ADDR_NAME, "dify_redis_1", 6379);
    addr_ok("10.0.0.5:6379", DIFY_REDIS_ADDR_IPV4, "10.0.0.5", 6379);
    addr_ok("127.0.0.1", DIFY_REDIS_ADDR_IPV4, "127.0.0.1", 6379);
    addr_ok("[::1]:6380", DIFY_REDIS_ADDR_IPV6, "::1", 6380);
    addr_ok("[fe80::1]", DIFY_REDIS_ADDR_IPV6, "fe80::1", 6379);
    addr_ok("unix:/run/redis.sock", DIFY_REDIS_ADDR_UNIX, "/run/redis.sock",
            0);
    addr_ok("a:65535", DIFY_REDIS_ADDR_NAME, "a", 65535);

    addr_bad("");
    addr_bad(":6379");
    addr_bad("redis:");
    addr_bad("redis:0");
    addr_bad("redis:65536");
    addr_bad("redis:63a");
    addr_bad("redis:-1");
    addr_bad("::1");
    addr_bad("::1:6379");
    addr_bad("[::1");
    addr_bad("[::1]6379");
    addr_bad("[]:6379");
    addr_bad("[zz::1]:6379");
    addr_bad("unix:");
    addr_bad("unix:relative.sock");
    addr_bad("-redis:6379");
    addr_bad("redis-:6379");
    addr_bad("re dis:6379");
    addr_bad("a..b:6379");
    addr_bad(".redis:6379");
    addr_bad("1.2.3.999:6379");     /* neither an address nor a name */
    addr_bad("1.2.3:6379");
    addr_bad("redis/x:6379");
    addr_bad("user@redis:6379");
    addr_bad("redis://redis:6379");

    /* a label of 64 bytes, a name of 254 */

    addr_bad("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
             ":6379");
    addr_ok("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            DIFY_REDIS_ADDR_NAME,
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            6379);
}


static void
test_embedded_nul(void **state)
{
    const char         *err;
    dify_redis_addr_t   a;

    (void) state;

    assert_int_equal(dify_redis_parse_addr(S("redis\0x:6379"), &a, &err), -1);
    assert_int_equal(dify_redis_parse_addr(S("unix:/a\0b"), &a, &err), -1);
    assert_int_equal(dify_redis_parse_addr(NULL, 0, &a, &err), -1);
}


static void
test_error_classes(void **state)
{
    struct {
        const char        *text;
        dify_redis_err_e   cls;
        const char        *name;
    } *t, tests[] = {
        { "NOSCRIPT No matching script. Please use EVAL.",
          DIFY_REDIS_ERR_NOSCRIPT, "noscript" },
        { "NOAUTH Authentication required.", DIFY_REDIS_ERR_NOAUTH,
          "noauth" },
        { "WRONGPASS invalid username-password pair or user is disabled.",
          DIFY_REDIS_ERR_WRONGPASS, "wrongpass" },
        { "NOPERM this user has no permissions to access one of the keys "
          "used as arguments", DIFY_REDIS_ERR_NOPERM, "noperm" },
        { "ERR The user executing the script can't run this command or "
          "subcommand script: 50134f893c733580174f55f2577eb27e651c3484, on "
          "@user_script:23.", DIFY_REDIS_ERR_NOPERM, "noperm" },
        { "OOM command not allowed when used memory > 'maxmemory'. script: "
          "af51, on @user_script:1.", DIFY_REDIS_ERR_OOM, "oom" },
        { "READONLY You can't write against a read only replica.",
          DIFY_REDIS_ERR_READONLY, "readonly" },
        { "LOADING Redis is loading the dataset in memory",
          DIFY_REDIS_ERR_LOADING, "loading" },
        { "BUSY Redis is busy running a script.", DIFY_REDIS_ERR_BUSY,
          "busy" },
        { "MASTERDOWN Link with MASTER is down and replica-serve-stale-data "
          "is set to 'no'.", DIFY_REDIS_ERR_MASTERDOWN, "masterdown" },
        { "MOVED 3999 127.0.0.1:6381", DIFY_REDIS_ERR_CLUSTER, "cluster" },
        { "ASK 3999 127.0.0.1:6381", DIFY_REDIS_ERR_CLUSTER, "cluster" },
        { "TRYAGAIN Multiple keys request during rehashing of slot",
          DIFY_REDIS_ERR_CLUSTER, "cluster" },
        { "CROSSSLOT Keys in request don't hash to the same slot",
          DIFY_REDIS_ERR_CLUSTER, "cluster" },
        { "CLUSTERDOWN The cluster is down", DIFY_REDIS_ERR_CLUSTER,
          "cluster" },
        { "ERR unknown command 'EVALSHA'", DIFY_REDIS_ERR_OTHER, "other" },
        { "ERR", DIFY_REDIS_ERR_OTHER, "other" },
        { "", DIFY_REDIS_ERR_OTHER, "other" },
        { "NOSCRIPTS x", DIFY_REDIS_ERR_OTHER, "other" },
        { "OOMX", DIFY_REDIS_ERR_OTHER, "other" },
        { "noperm lowercase", DIFY_REDIS_ERR_OTHER, "other" },
        { "BUSY", DIFY_REDIS_ERR_BUSY, "busy" },
        { NULL, 0, NULL }
    };

    (void) state;

    for (t = tests; t->text; t++) {
        if (dify_redis_error_class(t->text, strlen(t->text)) != t->cls) {
            fail_msg("\"%s\": class %d, expected %d", t->text,
                     dify_redis_error_class(t->text, strlen(t->text)),
                     t->cls);
        }

        assert_string_equal(dify_redis_error_name(t->cls), t->name);
    }

    /* the length bounds the word: "OOM" within "OOMX" */
    assert_int_equal(dify_redis_error_class("OOMX", 3), DIFY_REDIS_ERR_OOM);
    assert_int_equal(dify_redis_error_class(NULL, 0), DIFY_REDIS_ERR_OTHER);

    assert_string_equal(dify_redis_error_name(DIFY_REDIS_ERR_NONE), "none");
    assert_string_equal(dify_redis_error_name(DIFY_REDIS_ERR_N), "other");
}


/* a reply from its RESP bytes */

static redisReply *
reply_of(const char *resp)
{
    void         *reply;
    redisReader  *rd;

    rd = redisReaderCreate();
    assert_non_null(rd);

    assert_int_equal(redisReaderFeed(rd, resp, strlen(resp)), REDIS_OK);

    reply = NULL;
    assert_int_equal(redisReaderGetReply(rd, &reply), REDIS_OK);
    assert_non_null(reply);

    redisReaderFree(rd);

    return reply;
}


static int
master_of(const char *resp, const char *host, unsigned port)
{
    int          rc;
    size_t       hlen;
    unsigned     p;
    const char  *h;
    redisReply  *r;

    r = reply_of(resp);

    h = NULL;
    hlen = 0;
    p = 0;

    rc = dify_redis_sentinel_master(r, &h, &hlen, &p);

    if (rc == 0) {
        assert_int_equal(hlen, strlen(host));
        assert_memory_equal(h, host, hlen);
        assert_int_equal(p, port);
    }

    freeReplyObject(r);

    return rc;
}


static void
test_sentinel_master(void **state)
{
    (void) state;

    assert_int_equal(master_of("*2\r\n$9\r\n127.0.0.1\r\n$5\r\n26390\r\n",
                               "127.0.0.1", 26390), 0);
    assert_int_equal(master_of("*2\r\n$3\r\n::1\r\n$4\r\n6379\r\n",
                               "::1", 6379), 0);
    /* announce-hostnames yes */
    assert_int_equal(master_of("*2\r\n$11\r\nredis-a.lan\r\n"
                               "$4\r\n6380\r\n", "redis-a.lan", 6380), 0);
    /* an integer port, should a version send one */
    assert_int_equal(master_of("*2\r\n$9\r\n127.0.0.1\r\n:6379\r\n",
                               "127.0.0.1", 6379), 0);

    /* an unknown master */
    assert_int_equal(master_of("*-1\r\n", NULL, 0), 1);
    assert_int_equal(master_of("$-1\r\n", NULL, 0), 1);

    assert_int_equal(master_of("-NOAUTH Authentication required.\r\n",
                               NULL, 0), -1);
    assert_int_equal(master_of("-ERR unknown command 'SENTINEL'\r\n",
                               NULL, 0), -1);
    assert_int_equal(master_of("*0\r\n", NULL, 0), -1);
    assert_int_equal(master_of("*1\r\n$9\r\n127.0.0.1\r\n", NULL, 0), -1);
    assert_int_equal(master_of("*2\r\n$9\r\n127.0.0.1\r\n$1\r\n0\r\n",
                               NULL, 0), -1);
    assert_int_equal(master_of("*2\r\n$9\r\n127.0.0.1\r\n$5\r\n65536\r\n",
                               NULL, 0), -1);
    assert_int_equal(master_of("*2\r\n$9\r\n127.0.0.1\r\n$3\r\n6x9\r\n",
                               NULL, 0), -1);
    assert_int_equal(master_of("*2\r\n$0\r\n\r\n$4\r\n6379\r\n",
                               NULL, 0), -1);
    assert_int_equal(master_of("*2\r\n$3\r\na b\r\n$4\r\n6379\r\n",
                               NULL, 0), -1);
    assert_int_equal(master_of("*2\r\n:1\r\n$4\r\n6379\r\n", NULL, 0),
                     -1);
    assert_int_equal(master_of("*3\r\n$9\r\n127.0.0.1\r\n$4\r\n6379\r\n"
                               ":1\r\n", NULL, 0), -1);
}


static void
test_role(void **state)
{
    redisReply  *r;

    (void) state;

    /* a master with one replica (its port and offset bulk strings) */
    r = reply_of("*3\r\n$6\r\nmaster\r\n:3129\r\n*1\r\n*3\r\n"
                 "$9\r\n127.0.0.1\r\n$5\r\n26391\r\n$4\r\n3129\r\n");
    assert_int_equal(dify_redis_role_master(r), 1);
    freeReplyObject(r);

    r = reply_of("*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n");
    assert_int_equal(dify_redis_role_master(r), 1);
    freeReplyObject(r);

    r = reply_of("*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:26390\r\n"
                 "$9\r\nconnected\r\n:3129\r\n");
    assert_int_equal(dify_redis_role_master(r), 0);
    freeReplyObject(r);

    r = reply_of("*2\r\n$8\r\nsentinel\r\n*1\r\n$8\r\nmymaster\r\n");
    assert_int_equal(dify_redis_role_master(r), 0);
    freeReplyObject(r);

    r = reply_of("-NOPERM this user has no permissions to run the 'role' "
                 "command\r\n");
    assert_int_equal(dify_redis_role_master(r), 0);
    freeReplyObject(r);

    r = reply_of("$6\r\nmaster\r\n");
    assert_int_equal(dify_redis_role_master(r), 0);
    freeReplyObject(r);

    r = reply_of("*1\r\n$7\r\nmasterx\r\n");
    assert_int_equal(dify_redis_role_master(r), 0);
    freeReplyObject(r);
}


static int
switch_of(const char *s, const char *name, const char *host, unsigned port)
{
    int          rc;
    size_t       hlen;
    unsigned     p;
    const char  *h;

    h = NULL;
    hlen = 0;
    p = 0;

    rc = dify_redis_switch_master(s, strlen(s), name, strlen(name), &h,
                                  &hlen, &p);

    if (rc == 0) {
        assert_int_equal(hlen, strlen(host));
        assert_memory_equal(h, host, hlen);
        assert_int_equal(p, port);
    }

    return rc;
}


static void
test_switch_master(void **state)
{
    (void) state;

    assert_int_equal(switch_of("mymaster 127.0.0.1 26390 127.0.0.1 26391",
                               "mymaster", "127.0.0.1", 26391), 0);
    assert_int_equal(switch_of("mymaster ::1 6379 ::2 6380", "mymaster",
                               "::2", 6380), 0);

    /* another master of the same Sentinels */
    assert_int_equal(switch_of("other 127.0.0.1 26390 127.0.0.1 26391",
                               "mymaster", NULL, 0), -1);
    assert_int_equal(switch_of("mymasterx 127.0.0.1 1 127.0.0.1 2",
                               "mymaster", NULL, 0), -1);
    assert_int_equal(switch_of("mymaste 127.0.0.1 1 127.0.0.1 2",
                               "mymaster", NULL, 0), -1);

    /* malformed */
    assert_int_equal(switch_of("", "mymaster", NULL, 0), -1);
    assert_int_equal(switch_of("mymaster 127.0.0.1 26390 127.0.0.1",
                               "mymaster", NULL, 0), -1);
    assert_int_equal(switch_of("mymaster 127.0.0.1 26390 127.0.0.1 0",
                               "mymaster", NULL, 0), -1);
    assert_int_equal(switch_of("mymaster 127.0.0.1 26390 127.0.0.1 x",
                               "mymaster", NULL, 0), -1);
    assert_int_equal(switch_of("mymaster a 1 b 2 c", "mymaster", NULL, 0),
                     -1);
}


/*
 * The RESP encoder gives the bytes of hiredis's redisFormatCommandArgv(),
 * for arguments of every length around a change of digits, empty and
 * binary ones, and many arguments (a batch).
 */

static void
test_format(void **state)
{
    int           i, k, argc, hlen;
    char         *h, *mine, *data;
    size_t        len, argvlen[1200];
    unsigned      seed;
    const char   *argv[1200];
    static const size_t  lens[] = { 0, 1, 9, 10, 11, 99, 100, 101, 999,
                                    1000, 65536 };

    (void) state;

    data = malloc(65536 + 64);
    assert_non_null(data);

    for (i = 0; i < 65536 + 64; i++) {
        data[i] = (char) (i * 131 + 7);         /* NUL and CR LF included */
    }

    seed = 12345;

    for (k = 0; k < 300; k++) {
        argc = 1 + (k < 11 ? 0 : (int) ((seed = seed * 1103515245 + 12345)
                                        >> 16) % 1200);

        for (i = 0; i < argc; i++) {
            seed = seed * 1103515245 + 12345;
            argvlen[i] = (k < 11) ? lens[k]
                                  : lens[(seed >> 16) % 10] + (seed >> 28) % 3;
            argv[i] = data + (seed >> 8) % 32;
        }

        hlen = redisFormatCommandArgv(&h, argc, argv, argvlen);
        assert_true(hlen > 0);

        len = dify_redis_format_len(argc, argvlen);
        assert_int_equal(len, (size_t) hlen);

        mine = malloc(len);
        assert_non_null(mine);
        assert_int_equal(dify_redis_format(mine, argc, argv, argvlen), len);
        assert_memory_equal(mine, h, len);

        free(mine);
        free(h);
    }

    free(data);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_addresses),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_embedded_nul),
        cmocka_unit_test(test_error_classes),
        cmocka_unit_test(test_sentinel_master),
        cmocka_unit_test(test_role),
        cmocka_unit_test(test_switch_master),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
