/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Unit tests of dify_request.c: the route, the dataset id, the action,
 * the Authorization and Content-Type checks and the error envelope.
 */


#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <cmocka.h>
#include <jansson.h>

#include "dify_request.h"


/* a string literal as (data, len); the literal may hold NUL bytes */
#define U(s)  (const unsigned char *) (s), sizeof(s) - 1

#define UUID_LOWER  "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
#define UUID_UPPER  "3F2504E0-4F89-11D3-9A0C-0305E82C3301"

#define INVALID_ACTION                                                        \
    "{\"status\": 400, \"code\": \"invalid_action\", "                        \
    "\"message\": \"Invalid action.\"}"


static void
route_ok(const char *uri, const char *id, const char *action)
{
    size_t      len;
    dify_str_t  d, a;

    len = strlen(uri);

    d.len = 0;
    d.data = NULL;
    a = d;

    if (dify_route_match((const unsigned char *) uri, len, &d, &a) != 1) {
        fail_msg("\"%s\" does not match", uri);
    }

    /* both point into the URI */
    assert_true(d.data >= (const unsigned char *) uri);
    assert_true(d.data + d.len <= (const unsigned char *) uri + len);
    assert_true(a.data + a.len == (const unsigned char *) uri + len);

    assert_int_equal(d.len, strlen(id));
    assert_memory_equal(d.data, id, d.len);
    assert_int_equal(a.len, strlen(action));
    assert_memory_equal(a.data, action, a.len);
}


static void
route_no(const char *uri)
{
    dify_str_t  d, a;

    if (dify_route_match((const unsigned char *) uri, strlen(uri), &d, &a)
        != 0)
    {
        fail_msg("\"%s\" matches", uri);
    }
}


static void
test_route_plain(void **state)
{
    (void) state;

    route_ok("/v1/datasets/" UUID_LOWER "/documents/status/enable",
             UUID_LOWER, "enable");
    route_ok("/v1/datasets/" UUID_UPPER "/documents/status/un_archive",
             UUID_UPPER, "un_archive");

    /* no prefix, a longer one, one that ends in "datasets" */
    route_ok("/datasets/x/documents/status/disable", "x", "disable");
    route_ok("/api/dify/v1/datasets/x/documents/status/archive", "x",
             "archive");
    route_ok("/datasets/datasets/x/documents/status/a", "x", "a");
    route_ok("/v1/datasets/datasets/documents/status/enable", "datasets",
             "enable");

    /* the route is matched before ids and actions are checked */
    route_ok("/v1/datasets/not-a-uuid/documents/status/whatever",
             "not-a-uuid", "whatever");
    route_ok("/v1/datasets/x/documents/status/.", "x", ".");
    route_ok("/v1/datasets/%2F/documents/status/%41", "%2F", "%41");
    route_ok("/v1/datasets/a b/documents/status/c d", "a b", "c d");
}


static void
test_route_slashes(void **state)
{
    (void) state;

    /* runs of "/" count as one, wherever they are */
    route_ok("/v1//datasets/x/documents/status/enable", "x", "enable");
    route_ok("/v1/datasets//x/documents/status/enable", "x", "enable");
    route_ok("/v1/datasets/x//documents/status/enable", "x", "enable");
    route_ok("/v1/datasets/x/documents//status/enable", "x", "enable");
    route_ok("/v1/datasets/x/documents/status//enable", "x", "enable");
    route_ok("//datasets///x////documents/////status//////enable", "x",
             "enable");
    route_ok("//datasets/x/documents/status/enable", "x", "enable");

    /* a trailing slash does not match */
    route_no("/v1/datasets/x/documents/status/enable/");
    route_no("/v1/datasets/x/documents/status/enable//");
    route_no("/v1/datasets/x/documents/status/");
    route_no("/");
    route_no("//");
}


static void
test_route_decoded(void **state)
{
    (void) state;

    /*
     * nginx has percent-decoded the URI: "%2F" in the id or the action
     * arrives as "/", so the segments shift.
     */

    /* id "a%2Fb": the segment before "b" must be "datasets" */
    route_no("/v1/datasets/a/b/documents/status/enable");

    /* action "en%2Fable": the segment before "able" is not "status" */
    route_no("/v1/datasets/x/documents/status/en/able");

    /* what nginx leaves of "/v1/datasets/x/documents/status/enable/.." */
    route_no("/v1/datasets/x/documents/status");
}


static void
test_route_shape(void **state)
{
    dify_str_t  d, a;

    (void) state;

    route_no("");
    route_no("enable");
    route_no("/enable");
    route_no("/status/enable");
    route_no("/documents/status/enable");
    route_no("/x/documents/status/enable");
    route_no("x/documents/status/enable");
    route_no("/datasets/documents/status/enable");
    route_no("/v1/datasets//documents/status/enable");
    route_no("/v1/datasets/x/documents/status");
    route_no("/v1/datasets/x/documents/enable");
    route_no("/v1/datasets/x/status/enable");
    route_no("/v1/datasets/x/documents/status/enable/extra");
    route_no("/v1/datasets/x/y/documents/status/enable");
    route_no("/v1/dataset/x/documents/status/enable");
    route_no("/v1/xdatasets/x/documents/status/enable");
    route_no("/v1/datasetsx/x/documents/status/enable");
    route_no("/v1/datasets/x/document/status/enable");
    route_no("/v1/datasets/x/documentss/status/enable");
    route_no("/v1/datasets/x/documents/statuss/enable");
    route_no("/v1/datasets/x/documents/tatus/enable");
    route_no("/v1/datasets/x/documents/status");

    /* no "/" before "datasets": every nginx URI starts with one */
    route_no("datasets/x/documents/status/enable");

    /* case-sensitive */
    route_no("/v1/Datasets/x/documents/status/enable");
    route_no("/v1/datasets/x/Documents/status/enable");
    route_no("/v1/datasets/x/documents/Status/enable");
    route_no("/V1/DATASETS/X/DOCUMENTS/STATUS/ENABLE");

    /* NULL and length 0 */
    assert_int_equal(dify_route_match(NULL, 0, &d, &a), 0);
    assert_int_equal(dify_route_match(U("/"), &d, &a), 0);

    /* only len bytes are looked at */
    assert_int_equal(dify_route_match(
        U("/datasets/x/documents/status/enable/"), &d, &a), 0);
    assert_int_equal(dify_route_match(
        (const unsigned char *) "/datasets/x/documents/status/enable/", 35,
        &d, &a), 1);
}


static void
test_uuid(void **state)
{
    (void) state;

    assert_true(dify_is_uuid(U(UUID_LOWER)));
    assert_true(dify_is_uuid(U(UUID_UPPER)));
    assert_true(dify_is_uuid(U("3F2504e0-4f89-11D3-9a0C-0305e82c3301")));
    assert_true(dify_is_uuid(U("00000000-0000-0000-0000-000000000000")));
    assert_true(dify_is_uuid(U("ffffffff-ffff-ffff-ffff-ffffffffffff")));
    assert_true(dify_is_uuid(U("abcdefAB-CDEF-0123-4567-89abcdefABCD")));

    /* lengths */
    assert_false(dify_is_uuid(NULL, 0));
    assert_false(dify_is_uuid(U("")));
    assert_false(dify_is_uuid(U("3f2504e0-4f89-11d3-9a0c-0305e82c330")));
    assert_false(dify_is_uuid(U("3f2504e0-4f89-11d3-9a0c-0305e82c33011")));
    assert_false(dify_is_uuid(U("3f2504e0-4f89-11d3-9a0c-0305e82c3301-")));
    assert_false(dify_is_uuid(U("3f2504e04f8911d39a0c0305e82c3301")));
    assert_false(dify_is_uuid(U("{3f2504e0-4f89-11d3-9a0c-0305e82c3301}")));
    assert_false(dify_is_uuid(
        U("urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301")));

    /* 36 bytes, but not the shape */
    assert_false(dify_is_uuid(U("3f2504e0-4f89-11d3-9a0c-0305e82c330g")));
    assert_false(dify_is_uuid(U("g f2504e0-4f89-11d3-9a0c-0305e82c330")));
    assert_false(dify_is_uuid(U("3f2504e0-4f89-11d3-9a0c-0305e82c33G1")));
    assert_false(dify_is_uuid(U("3f2504e0-4f89-11d3-9a0c-0305e82c33 1")));
    assert_false(dify_is_uuid(U("3f2504e0-4f89-11d3-9a0c-0305e82c33\0""1")));
    assert_false(dify_is_uuid(U("3f2504e0-4f89-11d3-9a0c-0305e82c33\xc3")));
    assert_false(dify_is_uuid(U("3f2504e0-4f89-11d3-9a0c_0305e82c3301")));
    assert_false(dify_is_uuid(U("3f2504e004f89-11d3-9a0c-0305e82c3301")));
    assert_false(dify_is_uuid(U("3f2504e-04f89-11d3-9a0c-0305e82c3301")));
    assert_false(dify_is_uuid(U("3f2504e0-4f8-911d3-9a0c-0305e82c3301")));
    assert_false(dify_is_uuid(U("3f2504e0-4f89-11d-39a0c-0305e82c3301")));
    assert_false(dify_is_uuid(U("3f2504e0-4f89-11d3-9a0-c0305e82c3301")));
    assert_false(dify_is_uuid(U("------------------------------------")));
    assert_false(dify_is_uuid(U("3f2504e0+4f89+11d3+9a0c+0305e82c3301")));
    assert_false(dify_is_uuid(U("/f2504e0-4f89-11d3-9a0c-0305e82c3301")));
    assert_false(dify_is_uuid(U(":f2504e0-4f89-11d3-9a0c-0305e82c3301")));
    assert_false(dify_is_uuid(U("@f2504e0-4f89-11d3-9a0c-0305e82c3301")));
    assert_false(dify_is_uuid(U("`f2504e0-4f89-11d3-9a0c-0305e82c3301")));
}


static void
test_uuid_every_byte(void **state)
{
    int            c;
    size_t         i;
    unsigned char  u[36];

    (void) state;

    /* each position takes exactly the bytes it should */

    for (i = 0; i < 36; i++) {
        for (c = 0; c < 256; c++) {
            memcpy(u, UUID_LOWER, 36);
            u[i] = (unsigned char) c;

            if (i == 8 || i == 13 || i == 18 || i == 23) {
                assert_int_equal(dify_is_uuid(u, 36), c == '-');

            } else {
                assert_int_equal(dify_is_uuid(u, 36),
                                 (c >= '0' && c <= '9')
                                 || (c >= 'a' && c <= 'f')
                                 || (c >= 'A' && c <= 'F'));
            }
        }
    }
}


static void
test_action(void **state)
{
    (void) state;

    assert_true(dify_action_is_valid(U("enable")));
    assert_true(dify_action_is_valid(U("disable")));
    assert_true(dify_action_is_valid(U("archive")));
    assert_true(dify_action_is_valid(U("un_archive")));

    assert_false(dify_action_is_valid(NULL, 0));
    assert_false(dify_action_is_valid(U("")));
    assert_false(dify_action_is_valid(U("Enable")));
    assert_false(dify_action_is_valid(U("ENABLE")));
    assert_false(dify_action_is_valid(U("enabl")));
    assert_false(dify_action_is_valid(U("enablee")));
    assert_false(dify_action_is_valid(U("enable ")));
    assert_false(dify_action_is_valid(U(" enable")));
    assert_false(dify_action_is_valid(U("enable\0")));
    assert_false(dify_action_is_valid(U("disabled")));
    assert_false(dify_action_is_valid(U("archived")));
    assert_false(dify_action_is_valid(U("unarchive")));
    assert_false(dify_action_is_valid(U("un-archive")));
    assert_false(dify_action_is_valid(U("un_archivE")));
    assert_false(dify_action_is_valid(U("delete")));
    assert_false(dify_action_is_valid(U("archivf")));
    assert_false(dify_action_is_valid(U("disablf")));

    /* only len bytes are looked at */
    assert_true(dify_action_is_valid((const unsigned char *) "enabled", 6));
}


static void
auth_is(const unsigned char *p, size_t len, dify_auth_e rc,
    const char *token, size_t token_len)
{
    dify_str_t  t;

    assert_int_equal(dify_parse_authorization(p, len, &t), rc);

    if (rc != DIFY_AUTH_OK) {
        assert_int_equal(t.len, 0);
        return;
    }

    /* it points into the value, and only SP and HTAB follow it */

    assert_non_null(t.data);
    assert_true(t.data > p && t.data + t.len <= p + len);
    assert_int_equal(strspn((const char *) t.data + t.len, " \t"),
                     p + len - (t.data + t.len));

    if (t.len != token_len || memcmp(t.data, token, token_len) != 0) {
        fail_msg("token of %zu bytes, expected %zu", t.len, token_len);
    }
}


/* the value, then the result and the token, each as (data, len) */
#define AUTH_OK(v, t)    auth_is(U(v), DIFY_AUTH_OK, t, sizeof(t) - 1)
#define AUTH_MISSING(v)  auth_is(U(v), DIFY_AUTH_MISSING, NULL, 0)
#define AUTH_SCHEME(v)   auth_is(U(v), DIFY_AUTH_SCHEME, NULL, 0)


static void
test_auth(void **state)
{
    (void) state;

    AUTH_OK("Bearer dataset-abc", "dataset-abc");
    AUTH_OK("bearer dataset-abc", "dataset-abc");
    AUTH_OK("BEARER dataset-abc", "dataset-abc");
    AUTH_OK("BeArEr dataset-abc", "dataset-abc");
    AUTH_OK("Bearer x", "x");

    /* the token is whatever the scheme is not, even more words */
    AUTH_OK("Bearer a b  c", "a b  c");
    AUTH_OK("Bearer app-abc", "app-abc");
    AUTH_OK("Bearer \"quoted\"", "\"quoted\"");

    /* absent, or no literal space */
    auth_is(NULL, 0, DIFY_AUTH_MISSING, NULL, 0);
    auth_is(NULL, 7, DIFY_AUTH_MISSING, NULL, 0);
    AUTH_MISSING("");
    AUTH_MISSING("Bearer");
    AUTH_MISSING("Bearerdataset-abc");
    AUTH_MISSING("Bearer\tdataset-abc");
    AUTH_MISSING("Bearer\xa0" "dataset-abc");
    AUTH_MISSING("Basic\tdXNlcjpwYXNz");
    AUTH_MISSING("dataset-abc");

    /* no token: split() gives one item, unpacking it fails first */
    AUTH_MISSING("Bearer ");
    AUTH_MISSING("Bearer    ");
    AUTH_MISSING("Bearer \t\r\n");
    AUTH_MISSING(" Bearer");
    AUTH_MISSING(" Bearer ");
    AUTH_MISSING("Basic ");
    AUTH_MISSING(" ");
    AUTH_MISSING("   ");
    AUTH_MISSING(" \t\xa0\x85\x1c ");

    /* other schemes */
    AUTH_SCHEME("Basic dXNlcjpwYXNz");
    AUTH_SCHEME("Token dataset-abc");
    AUTH_SCHEME("Bearerx dataset-abc");
    AUTH_SCHEME("Bear dataset-abc");
    AUTH_SCHEME("Beare dataset-abc");
    AUTH_SCHEME("xBearer dataset-abc");
    AUTH_SCHEME("dataset-abc Bearer");
    AUTH_SCHEME("Bearer: dataset-abc");
    AUTH_SCHEME("Bearer\x01 dataset-abc");
    AUTH_SCHEME("Bearer\0 dataset-abc");
    AUTH_SCHEME("B\xc3\xa9" "arer dataset-abc");
    AUTH_SCHEME("Be\xc3\xa1rer dataset-abc");
    AUTH_SCHEME("\"Bearer\" dataset-abc");
    AUTH_SCHEME("Bearer-dataset abc");

    /* whitespace runs, as Python's str.split(None, 1) */
    AUTH_OK("Bearer  dataset-abc", "dataset-abc");
    AUTH_OK("Bearer \t dataset-abc", "dataset-abc");
    AUTH_OK("Bearer\t dataset-abc", "dataset-abc");
    AUTH_OK(" Bearer dataset-abc", "dataset-abc");
    AUTH_OK("  \tBearer dataset-abc", "dataset-abc");
    AUTH_OK("\vBearer\f dataset-abc", "dataset-abc");
    AUTH_OK("Bearer\r\n dataset-abc", "dataset-abc");

    /* the latin-1 whitespace Python knows: 0x1c-0x1f, 0x85, 0xa0 */
    AUTH_OK("Bearer\x1c\x1d\x1e\x1f dataset-abc", "dataset-abc");
    AUTH_OK("Bearer\x85 dataset-abc", "dataset-abc");
    AUTH_OK("Bearer \xa0" "dataset-abc", "dataset-abc");
    AUTH_OK("\xa0" "Bearer tok", "tok");
    AUTH_OK("Bearer\xa0tok x", "tok x");

    /* not whitespace to Python */
    AUTH_OK("Bearer \x01tok", "\x01tok");
    AUTH_OK("Bearer \x7ftok", "\x7ftok");
    AUTH_OK("Bearer \x80tok", "\x80tok");
    AUTH_OK("Bearer \x84tok", "\x84tok");
    AUTH_OK("Bearer \xa1tok", "\xa1tok");
    AUTH_OK("Bearer \0tok", "\0tok");
    AUTH_OK("Bearer \x1btok", "\x1btok");
    AUTH_SCHEME("Bearer\x1b tok");

    /*
     * gunicorn strips SP and HTAB from the ends of the value; other
     * trailing whitespace stays in the token
     */
    AUTH_OK("Bearer dataset-abc ", "dataset-abc");
    AUTH_OK("Bearer dataset-abc \t", "dataset-abc");
    AUTH_OK("Bearer dataset-abc\xa0", "dataset-abc\xa0");
    AUTH_OK("Bearer dataset-abc\xa0\t ", "dataset-abc\xa0");

    /* the SP that wraps.py looks for must survive the strip */
    AUTH_MISSING("Bearer\tdataset-abc ");
    AUTH_MISSING(" Bearer\tdataset-abc");
}


/*
 * Spellings of one key and of others, each with the verdict and token
 * that gunicorn 25.3's parse_headers (value.strip(" \t")) and Dify's
 * wraps.py (" " in value, value.split(None, 1), scheme.lower()) give in
 * CPython 3.11 on the latin-1 string; generated with that code once.
 */

static void
test_auth_model(void **state)
{
    (void) state;

    AUTH_OK("Bearer dataset-K", "dataset-K");
    AUTH_OK("bearer dataset-K", "dataset-K");
    AUTH_OK("BEARER dataset-K", "dataset-K");
    AUTH_OK("bEaReR dataset-K", "dataset-K");
    AUTH_OK("Bearer  dataset-K", "dataset-K");
    AUTH_OK("Bearer \tdataset-K", "dataset-K");
    AUTH_OK("Bearer\t dataset-K", "dataset-K");
    AUTH_OK("Bearer dataset-K\t", "dataset-K");
    AUTH_OK("Bearer dataset-K\t\t", "dataset-K");
    AUTH_OK("Bearer dataset-K \t", "dataset-K");
    AUTH_OK("Bearer dataset-K\t ", "dataset-K");
    AUTH_OK("Bearer dataset-K ", "dataset-K");
    AUTH_OK("Bearer dataset-K  ", "dataset-K");
    AUTH_OK(" Bearer dataset-K", "dataset-K");
    AUTH_OK("\tBearer dataset-K", "dataset-K");
    AUTH_OK(" \t Bearer dataset-K \t ", "dataset-K");
    AUTH_OK("\t\tbearer\t \tdataset-K\t\t", "dataset-K");
    AUTH_OK("Bearer \vdataset-K", "dataset-K");
    AUTH_OK("Bearer\v dataset-K", "dataset-K");
    AUTH_OK("Bearer\f dataset-K", "dataset-K");
    AUTH_OK("Bearer \x1c\x1d\x1e\x1f" "dataset-K", "dataset-K");
    AUTH_OK("Bearer \x85" "dataset-K", "dataset-K");
    AUTH_OK("Bearer \xa0" "dataset-K", "dataset-K");
    AUTH_OK("Bearer\xa0 dataset-K", "dataset-K");
    AUTH_OK("\vBearer dataset-K", "dataset-K");
    AUTH_OK("\xa0" "Bearer dataset-K", "dataset-K");
    AUTH_OK("\x85 Bearer dataset-K", "dataset-K");
    AUTH_OK("Bearer dataset-K\v", "dataset-K\v");
    AUTH_OK("Bearer dataset-K\v ", "dataset-K\v");
    AUTH_OK("Bearer dataset-K\v\t", "dataset-K\v");
    AUTH_OK("Bearer dataset-K \v", "dataset-K \v");
    AUTH_OK("Bearer dataset-K\xa0\t", "dataset-K\xa0");
    AUTH_OK("Bearer dataset-K \x85 \t", "dataset-K \x85");
    AUTH_OK("Bearer dataset-K\x1c", "dataset-K\x1c");
    AUTH_OK("Bearer dataset-K x", "dataset-K x");
    AUTH_OK("Bearer dataset-K\tx", "dataset-K\tx");
    AUTH_OK("Bearer dataset-K \tx \t", "dataset-K \tx");
    AUTH_OK("Bearer \x01" "dataset-K", "\x01" "dataset-K");
    AUTH_OK("Bearer dataset-K\x01", "dataset-K\x01");
    AUTH_MISSING("");
    AUTH_MISSING(" ");
    AUTH_MISSING("\t");
    AUTH_MISSING(" \t ");
    AUTH_MISSING("Bearer");
    AUTH_MISSING("Bearer ");
    AUTH_MISSING("Bearer  ");
    AUTH_MISSING("Bearer \t");
    AUTH_MISSING("Bearer\t");
    AUTH_MISSING("Bearer\t ");
    AUTH_MISSING(" Bearer\t");
    AUTH_MISSING("Bearer\tdataset-K");
    AUTH_MISSING("Bearer\tdataset-K ");
    AUTH_MISSING("Bearer\tdataset-K\t ");
    AUTH_MISSING("bearer\tdataset-K ");
    AUTH_MISSING(" Bearer\tdataset-K");
    AUTH_MISSING("Bearer\xa0" "dataset-K");
    AUTH_MISSING("Bearer\xa0" "dataset-K ");
    AUTH_MISSING("Bearer\vdataset-K\t");
    AUTH_MISSING("dataset-K");
    AUTH_MISSING("dataset-K ");
    AUTH_MISSING(" dataset-K");
    AUTH_MISSING("Bearer \v");
    AUTH_MISSING("Bearer \xa0");
    AUTH_MISSING("Bearer \x85\t");
    AUTH_MISSING("Bearer \v\f ");
    AUTH_MISSING("\vBearer\v");
    AUTH_MISSING("\v \v");
    AUTH_MISSING("\xa0 ");
    AUTH_MISSING(" \x85 ");
    AUTH_SCHEME("Basic dataset-K");
    AUTH_SCHEME("Token dataset-K");
    AUTH_SCHEME("Bearerx dataset-K");
    AUTH_SCHEME("Bearer: dataset-K");
    AUTH_SCHEME("Bearer\x01 dataset-K");
    AUTH_SCHEME("xBearer dataset-K");
    AUTH_SCHEME("Bear dataset-K");
    AUTH_SCHEME("Token\tdataset-K dataset-K");
    AUTH_SCHEME("dataset-K Bearer");
    AUTH_SCHEME("\vToken dataset-K");
    AUTH_SCHEME("B\xe9" "arer dataset-K");
    AUTH_SCHEME("Bearer\x1b dataset-K");
    AUTH_SCHEME("\tBasic\t dataset-K\t");
}


/* Python's str.isspace() on a latin-1 code point */

static int
py_isspace(unsigned char c)
{
    return (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x20)
           || c == 0x85 || c == 0xa0;
}


/*
 * The model again, step by step as the Python reads, on a copy:
 * v = v.strip(" \t"); " " in v; words = v.split(None, 1).
 */

static dify_auth_e
model_auth(const unsigned char *p, size_t len, unsigned char *token,
    size_t *token_len)
{
    size_t  i, b, e, w0, w1;

    b = 0;
    e = len;

    while (b < e && (p[b] == ' ' || p[b] == '\t')) {
        b++;
    }

    while (e > b && (p[e - 1] == ' ' || p[e - 1] == '\t')) {
        e--;
    }

    for (i = b; i < e && p[i] != ' '; i++) { /* void */ }

    if (i == e) {
        return DIFY_AUTH_MISSING;
    }

    for (i = b; i < e && py_isspace(p[i]); i++) { /* void */ }

    w0 = i;

    for ( /* void */ ; i < e && !py_isspace(p[i]); i++) { /* void */ }

    w1 = i;

    for ( /* void */ ; i < e && py_isspace(p[i]); i++) { /* void */ }

    if (w0 == w1 || i == e) {
        return DIFY_AUTH_MISSING;
    }

    if (w1 - w0 != 6 || strncasecmp((const char *) p + w0, "bearer", 6) != 0) {
        return DIFY_AUTH_SCHEME;
    }

    *token_len = e - i;
    memcpy(token, p + i, e - i);

    return DIFY_AUTH_OK;
}


static void
test_auth_combinations(void **state)
{
    size_t          i, a, b, c, s, w, len, tlen, n, nws, nschemes, nwords;
    dify_str_t      t;
    dify_auth_e     rc, expect;
    unsigned char   v[64], token[64];

    static const char  *ws[] = {
        "", " ", "\t", "  ", "\t\t", " \t", "\t ", "\v", "\xa0", "\x85",
        "\x1c", "\f ", " \v", "\t\xa0", "\xa0 ", " \x1f\t"
    };
    static const char  *schemes[] = { "Bearer", "bEARER", "Basic", "" };
    static const char  *words[] = { "k", "k x", "k\tx", "k\vx" };

    (void) state;

    /* ws scheme ws word ws: every combination against the model */

    nws = sizeof(ws) / sizeof(ws[0]);
    nschemes = sizeof(schemes) / sizeof(schemes[0]);
    nwords = sizeof(words) / sizeof(words[0]);

    n = 0;

    for (i = 0; i < nws * nschemes * nws * nwords * nws; i++) {
        a = i % nws;
        s = i / nws % nschemes;
        b = i / nws / nschemes % nws;
        w = i / nws / nschemes / nws % nwords;
        c = i / nws / nschemes / nws / nwords;

        len = (size_t) snprintf((char *) v, sizeof(v), "%s%s%s%s%s", ws[a],
                                schemes[s], ws[b], words[w], ws[c]);

        expect = model_auth(v, len, token, &tlen);
        rc = dify_parse_authorization(v, len, &t);

        if (rc != expect
            || (rc == DIFY_AUTH_OK
                && (t.len != tlen || memcmp(t.data, token, tlen) != 0)))
        {
            fail_msg("\"%s|%s|%s|%s|%s\": %d, not %d", ws[a], schemes[s],
                     ws[b], words[w], ws[c], rc, expect);
        }

        n += (rc == DIFY_AUTH_OK);
    }

    /* the table is not degenerate */
    assert_true(n > 1000);
}


static void
test_auth_every_byte(void **state)
{
    int            c, space;
    dify_str_t     t;
    dify_auth_e    rc;
    unsigned char  v[sizeof("Bearer x y") - 1];

    (void) state;

    /* "Bearer" c "x y": c either separates the scheme or ends it */

    for (c = 0; c < 256; c++) {
        memcpy(v, "Bearer_x y", sizeof(v));
        v[6] = (unsigned char) c;

        space = (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x20)
                || c == 0x85 || c == 0xa0;

        rc = dify_parse_authorization(v, sizeof(v), &t);

        if (space) {
            assert_int_equal(rc, DIFY_AUTH_OK);
            assert_int_equal(t.len, 3);
            assert_memory_equal(t.data, "x y", 3);

        } else {
            assert_int_equal(rc, DIFY_AUTH_SCHEME);
        }
    }
}


static void
media_is(const char *ct, const char *ce, dify_media_e rc)
{
    dify_media_e  got;

    got = dify_check_media((const unsigned char *) ct, ct ? strlen(ct) : 0,
                           (const unsigned char *) ce, ce ? strlen(ce) : 0);

    if (got != rc) {
        fail_msg("Content-Type \"%s\", Content-Encoding \"%s\": %d, not %d",
                 ct ? ct : "(none)", ce ? ce : "(none)", got, rc);
    }
}


static void
test_media_type(void **state)
{
    (void) state;

    media_is("application/json", NULL, DIFY_MEDIA_OK);
    media_is("Application/JSON", NULL, DIFY_MEDIA_OK);
    media_is("APPLICATION/JSON", NULL, DIFY_MEDIA_OK);
    media_is("application/json; charset=utf-8", NULL, DIFY_MEDIA_OK);
    media_is("application/json;charset=latin-1", NULL, DIFY_MEDIA_OK);
    media_is("application/json;", NULL, DIFY_MEDIA_OK);
    media_is("application/json ; x", NULL, DIFY_MEDIA_OK);
    media_is("  application/json  ", NULL, DIFY_MEDIA_OK);
    media_is("\tapplication/json\t;", NULL, DIFY_MEDIA_OK);
    media_is("\xa0" "application/json\x85\x1f", NULL, DIFY_MEDIA_OK);
    media_is("application/json;;;garbage=\"", NULL, DIFY_MEDIA_OK);

    /* application/<x>+json */
    media_is("application/vnd.api+json", NULL, DIFY_MEDIA_OK);
    media_is("APPLICATION/VND.API+JSON", NULL, DIFY_MEDIA_OK);
    media_is("application/merge-patch+json", NULL, DIFY_MEDIA_OK);
    media_is("application/problem+JSON; q=1", NULL, DIFY_MEDIA_OK);
    media_is("application/+json", NULL, DIFY_MEDIA_OK);
    media_is("application/a b+json", NULL, DIFY_MEDIA_OK);
    media_is("application/json+json", NULL, DIFY_MEDIA_OK);

    /* missing: only when the header is absent */
    media_is(NULL, NULL, DIFY_MEDIA_MISSING);
    media_is(NULL, "gzip", DIFY_MEDIA_MISSING);

    media_is("", NULL, DIFY_MEDIA_NOT_JSON);
    media_is(" ", NULL, DIFY_MEDIA_NOT_JSON);
    media_is(";", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("; application/json", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("text/json", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("text/plain", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("text/plain+json", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("application/x-www-form-urlencoded", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("multipart/form-data; boundary=x", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("application/x-json", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("application/jsonx", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("application/json5", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("application/json+", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("application/+jso", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("application/jso", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("application/vnd.api+jsonx", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("application/vnd.api json", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("application/ json", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("application /json", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("application", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("application/", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("+json", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("applicationx+json", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("xapplication/json", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("application/json, text/plain", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("application/json\x01", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("\"application/json\"", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("application\\/json", NULL, DIFY_MEDIA_NOT_JSON);
    media_is("*/*", NULL, DIFY_MEDIA_NOT_JSON);

    /* only ct_len bytes are looked at */
    assert_int_equal(dify_check_media(U("application/jsonx"), NULL, 0),
                     DIFY_MEDIA_NOT_JSON);
    assert_int_equal(dify_check_media(
        (const unsigned char *) "application/jsonx", 16, NULL, 0),
        DIFY_MEDIA_OK);
    assert_int_equal(dify_check_media(
        (const unsigned char *) "application/json", 0, NULL, 0),
        DIFY_MEDIA_NOT_JSON);
}


static void
test_media_encoding(void **state)
{
    (void) state;

    media_is("application/json", "", DIFY_MEDIA_OK);
    media_is("application/json", " ", DIFY_MEDIA_OK);
    media_is("application/json", "identity", DIFY_MEDIA_OK);
    media_is("application/json", "IDENTITY", DIFY_MEDIA_OK);
    media_is("application/json", "Identity", DIFY_MEDIA_OK);
    media_is("application/json", " identity\t", DIFY_MEDIA_OK);

    media_is("application/json", "gzip", DIFY_MEDIA_ENCODED);
    media_is("application/json", "deflate", DIFY_MEDIA_ENCODED);
    media_is("application/json", "br", DIFY_MEDIA_ENCODED);
    media_is("application/json", "zstd", DIFY_MEDIA_ENCODED);
    media_is("application/json", "x", DIFY_MEDIA_ENCODED);
    media_is("application/json", "identity, gzip", DIFY_MEDIA_ENCODED);
    media_is("application/json", "gzip, identity", DIFY_MEDIA_ENCODED);
    media_is("application/json", "identity,gzip", DIFY_MEDIA_ENCODED);
    media_is("application/json", ",,gzip", DIFY_MEDIA_ENCODED);
    media_is("application/json", "identity,", DIFY_MEDIA_OK);
    media_is("application/json", "identity, identity", DIFY_MEDIA_OK);
    media_is("application/json", " , identity\t,,\tIDENTITY ,", DIFY_MEDIA_OK);
    media_is("application/json", ",", DIFY_MEDIA_OK);
    media_is("application/json", "identity\v", DIFY_MEDIA_ENCODED);
    media_is("application/json", "identity gzip", DIFY_MEDIA_ENCODED);
    media_is("application/json", "identit", DIFY_MEDIA_ENCODED);
    media_is("application/json", "identityy", DIFY_MEDIA_ENCODED);
    media_is("application/json", "identity;q=1", DIFY_MEDIA_ENCODED);
    media_is("application/vnd.api+json", "gzip", DIFY_MEDIA_ENCODED);

    /* the media type is looked at first */
    media_is("text/plain", "gzip", DIFY_MEDIA_NOT_JSON);
    media_is("", "gzip", DIFY_MEDIA_NOT_JSON);

    /* only ce_len bytes are looked at */
    assert_int_equal(dify_check_media(U("application/json"),
                                      U("identityx")),
                     DIFY_MEDIA_ENCODED);
    assert_int_equal(dify_check_media(U("application/json"),
                                      (const unsigned char *) "identityx", 8),
                     DIFY_MEDIA_OK);
    assert_int_equal(dify_check_media(U("application/json"),
                                      (const unsigned char *) "gzip", 0),
                     DIFY_MEDIA_OK);
}


/* NULL-terminated lists of Content-Type and Content-Encoding values */

static void
media_headers_is(const char **ct, const char **ce, dify_media_e rc)
{
    dify_media_e  got;
    dify_media_t  m;

    dify_media_init(&m);

    for ( /* void */ ; ct != NULL && *ct != NULL; ct++) {
        dify_media_type(&m, (const unsigned char *) *ct, strlen(*ct));
    }

    for ( /* void */ ; ce != NULL && *ce != NULL; ce++) {
        dify_media_encoding(&m, (const unsigned char *) *ce, strlen(*ce));
    }

    got = dify_media_verdict(&m);

    if (got != rc) {
        fail_msg("%d, not %d", got, rc);
    }
}


#define LIST(...)  (const char *[]) { __VA_ARGS__, NULL }


static void
test_media_headers(void **state)
{
    (void) state;

    /* gunicorn keeps the last Content-Type: two that differ are refused */
    media_headers_is(LIST("application/json", "application/json"), NULL,
                     DIFY_MEDIA_OK);
    media_headers_is(LIST("application/json", " application/json\t"), NULL,
                     DIFY_MEDIA_OK);
    media_headers_is(LIST("text/plain", "text/plain"), NULL,
                     DIFY_MEDIA_NOT_JSON);
    media_headers_is(LIST("", ""), NULL, DIFY_MEDIA_NOT_JSON);
    media_headers_is(LIST("application/json", "text/plain"), NULL,
                     DIFY_MEDIA_CONFLICT);
    media_headers_is(LIST("text/plain", "application/json"), NULL,
                     DIFY_MEDIA_CONFLICT);
    media_headers_is(LIST("application/json",
                          "application/json; charset=utf-8"), NULL,
                     DIFY_MEDIA_CONFLICT);
    media_headers_is(LIST("application/json", "Application/JSON"), NULL,
                     DIFY_MEDIA_CONFLICT);
    media_headers_is(LIST("application/json", ""), NULL,
                     DIFY_MEDIA_CONFLICT);
    media_headers_is(LIST("", "application/json"), NULL,
                     DIFY_MEDIA_CONFLICT);
    media_headers_is(LIST("application/json", "application/json",
                          "text/plain"), NULL, DIFY_MEDIA_CONFLICT);
    media_headers_is(LIST("application/json", "application/json\v"), NULL,
                     DIFY_MEDIA_CONFLICT);

    /* every Content-Encoding header counts */
    media_headers_is(LIST("application/json"), LIST("identity", "gzip"),
                     DIFY_MEDIA_ENCODED);
    media_headers_is(LIST("application/json"), LIST("gzip", "identity"),
                     DIFY_MEDIA_ENCODED);
    media_headers_is(LIST("application/json"), LIST("", "identity, x"),
                     DIFY_MEDIA_ENCODED);
    media_headers_is(LIST("application/json"),
                     LIST("identity", "", " IDENTITY ", ","), DIFY_MEDIA_OK);

    /* in the order: missing, conflict, not JSON, encoded */
    media_headers_is(NULL, LIST("gzip"), DIFY_MEDIA_MISSING);
    media_headers_is(LIST("text/plain", "application/json"), LIST("gzip"),
                     DIFY_MEDIA_CONFLICT);
    media_headers_is(LIST("text/plain"), LIST("gzip"), DIFY_MEDIA_NOT_JSON);
    media_headers_is(LIST("application/json"), LIST("gzip"),
                     DIFY_MEDIA_ENCODED);
    media_headers_is(NULL, NULL, DIFY_MEDIA_MISSING);
}


static void
envelope_is(int status, const char *code, const char *message,
    const char *expect)
{
    size_t          n, len;
    unsigned char  *buf;

    len = strlen(expect);

    /* exactly the room it needs: ASan sees any byte written past it */

    buf = malloc(len);
    assert_non_null(buf);

    n = dify_json_envelope(buf, len, status, code, message);

    if (n != len || memcmp(buf, expect, len) != 0) {
        fail_msg("got \"%.*s\", expected \"%s\"", (int) n, buf, expect);
    }

    free(buf);

    /* every smaller buffer is refused, and not overrun */

    for (n = 0; n < len; n++) {
        buf = malloc(n ? n : 1);
        assert_non_null(buf);

        assert_int_equal(dify_json_envelope(buf, n, status, code, message),
                         0);

        free(buf);
    }
}


static void
test_envelope(void **state)
{
    size_t         n;
    unsigned char  buf[256];

    (void) state;

    /* the documented bodies, byte for byte */

    envelope_is(400, "invalid_action", "Invalid action.", INVALID_ACTION);
    envelope_is(404, "not_found", "Dataset not found.",
                "{\"status\": 404, \"code\": \"not_found\", "
                "\"message\": \"Dataset not found.\"}");
    envelope_is(403, "forbidden", "Insufficient permissions.",
                "{\"status\": 403, \"code\": \"forbidden\", "
                "\"message\": \"Insufficient permissions.\"}");
    envelope_is(401, "unauthorized",
                "Authorization scheme must be 'Bearer'",
                "{\"status\": 401, \"code\": \"unauthorized\", "
                "\"message\": \"Authorization scheme must be 'Bearer'\"}");

    /* numbers */
    envelope_is(0, "", "",
                "{\"status\": 0, \"code\": \"\", \"message\": \"\"}");
    envelope_is(7, "a", "b",
                "{\"status\": 7, \"code\": \"a\", \"message\": \"b\"}");
    envelope_is(-1, "a", "b",
                "{\"status\": -1, \"code\": \"a\", \"message\": \"b\"}");
    envelope_is(INT_MAX, "a", "b",
                "{\"status\": 2147483647, \"code\": \"a\", "
                "\"message\": \"b\"}");
    envelope_is(INT_MIN, "a", "b",
                "{\"status\": -2147483648, \"code\": \"a\", "
                "\"message\": \"b\"}");

    /* NULL strings are empty */
    envelope_is(500, NULL, NULL,
                "{\"status\": 500, \"code\": \"\", \"message\": \"\"}");

    /* escapes, as Python's json.dumps() writes them */
    envelope_is(400, "c\"d", "q\" b\\ n\n r\r t\t b\b f\f 1\x01 1f\x1f 7f\x7f",
                "{\"status\": 400, \"code\": \"c\\\"d\", \"message\": "
                "\"q\\\" b\\\\ n\\n r\\r t\\t b\\b f\\f 1\\u0001 "
                "1f\\u001f 7f\\u007f\"}");
    envelope_is(400, "/", "'<>&",
                "{\"status\": 400, \"code\": \"/\", \"message\": \"'<>&\"}");

    /* UTF-8 passes as it is */
    envelope_is(400, "x", "caf\xc3\xa9",
                "{\"status\": 400, \"code\": \"x\", "
                "\"message\": \"caf\xc3\xa9\"}");

    /* a larger buffer: the length, and nothing written after it */
    memset(buf, 'Z', sizeof(buf));
    n = dify_json_envelope(buf, sizeof(buf), 400, "invalid_action",
                           "Invalid action.");
    assert_int_equal(n, sizeof(INVALID_ACTION) - 1);
    assert_memory_equal(buf, INVALID_ACTION, n);
    assert_int_equal(buf[n], 'Z');

    assert_int_equal(dify_json_envelope(NULL, 100, 400, "a", "b"), 0);
}


static void
test_envelope_is_json(void **state)
{
    int            c;
    json_t        *root;
    size_t         n;
    json_error_t   err;
    char           msg[128];
    unsigned char  buf[1024];

    (void) state;

    /* every ASCII byte but NUL survives a round trip through a parser */

    for (c = 1; c < 128; c++) {
        msg[c - 1] = (char) c;
    }

    msg[127] = '\0';

    n = dify_json_envelope(buf, sizeof(buf), 429, "too_many_requests", msg);
    assert_true(n > 0);

    root = json_loadb((const char *) buf, n, JSON_REJECT_DUPLICATES, &err);
    if (root == NULL) {
        fail_msg("json_loadb() failed: %s", err.text);
    }

    assert_int_equal(json_object_size(root), 3);
    assert_int_equal(json_integer_value(json_object_get(root, "status")),
                     429);
    assert_string_equal(json_string_value(json_object_get(root, "code")),
                        "too_many_requests");
    assert_string_equal(json_string_value(json_object_get(root, "message")),
                        msg);

    json_decref(root);
}


static void
flask_path_is(const char *raw, size_t len, const char *want, size_t want_len)
{
    size_t         n;
    unsigned char  out[256];

    assert_true(len <= sizeof(out));
    n = dify_flask_path((const unsigned char *) raw, len, out);
    assert_int_equal(n, want_len);
    assert_memory_equal(out, want, want_len);
}

#define FLASK_PATH(raw, want)                                                 \
    flask_path_is(raw, sizeof(raw) - 1, want, sizeof(want) - 1)


static void
test_flask_path(void **state)
{
    dify_str_t  d, a;
    size_t      n;
    unsigned char  out[128];

    (void) state;

    FLASK_PATH("", "");
    FLASK_PATH("/v1/datasets", "/v1/datasets");
    FLASK_PATH("/a/../b/./c", "/a/../b/./c");       /* nothing resolved */
    FLASK_PATH("/en%61ble", "/enable");
    FLASK_PATH("/%2e%2E", "/..");
    FLASK_PATH("/a%2Fb%2fc", "/a/b/c");             /* %2F decoded */
    FLASK_PATH("/a%3Fb?c", "/a?b");                 /* %3F is no query */
    FLASK_PATH("/a?b#c", "/a");
    FLASK_PATH("/a#b?c", "/a");
    FLASK_PATH("/a%23b#c", "/a#b");
    FLASK_PATH("/%zz%4", "/%zz%4");                 /* invalid: kept */
    FLASK_PATH("/%2565", "/%65");                   /* once */
    FLASK_PATH("/%00", "/\0");

    n = dify_flask_path(U("/v1/datasets/" UUID_LOWER
                          "/documents/status/%2e%2e?x"), out);
    assert_int_equal(dify_route_match(out, n, &d, &a), 1);
    assert_int_equal(a.len, 2);
    assert_memory_equal(a.data, "..", 2);
    assert_int_equal(dify_action_is_valid(a.data, a.len), 0);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_route_plain),
        cmocka_unit_test(test_flask_path),
        cmocka_unit_test(test_route_slashes),
        cmocka_unit_test(test_route_decoded),
        cmocka_unit_test(test_route_shape),
        cmocka_unit_test(test_uuid),
        cmocka_unit_test(test_uuid_every_byte),
        cmocka_unit_test(test_action),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_auth_model),
        cmocka_unit_test(test_auth_combinations),
        cmocka_unit_test(test_auth_every_byte),
        cmocka_unit_test(test_media_type),
        cmocka_unit_test(test_media_encoding),
        cmocka_unit_test(test_media_headers),
        cmocka_unit_test(test_envelope),
        cmocka_unit_test(test_envelope_is_json),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
