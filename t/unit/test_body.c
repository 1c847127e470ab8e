/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Unit tests of dify_body.c: rows 6 and 7 of the contract.
 */


#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>
#include <jansson.h>

#include "dify_body.h"


#define U1  "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
#define U2  "6fa459ea-ee8a-3ca4-894e-db77e160355e"
#define U3  "886313e1-3b8a-5372-9b90-0c9aee199e5d"
#define U1_UPPER  "3F2504E0-4F89-11D3-9A0C-0305E82C3301"

#define BAD_UUID_MSG(i)  "document_ids[" #i "] is not a valid UUID."
#define NOT_STRING_MSG(i)  "document_ids[" #i "] must be a string."
#define NOT_ARRAY_MSG  "document_ids must be an array of strings."
#define REQUIRED_MSG  "document_ids is required."
#define BOM_MSG  "a UTF-8 byte order mark"
#define DEEP_MSG  "nested deeper than 64 levels"


/* the defaults of the module's directives */
static const dify_body_conf_t  conf_uuid = { 100, 0, 1, 0 };
static const dify_body_conf_t  conf_any = { 100, 1, 1, 0 };
static const dify_body_conf_t  conf_dups = { 100, 0, 0, 0 };
static const dify_body_conf_t  conf_any_dups = { 100, 1, 0, 0 };
static const dify_body_conf_t  conf_nocap = { 0, 0, 1, 0 };
static const dify_body_conf_t  conf_any_nocap = { 0, 1, 1, 0 };


/* bodies the one-pass reading of the common form decided, of all */
static size_t  fast_decided, validated;
static int     both_ways = 1;       /* 0: allocations fail on purpose */


/*
 * Validates a copy of exactly len bytes, so that ASan sees any read
 * past the body, and checks what holds whatever the outcome.  Every
 * body is validated twice, as the module does and with the common form's
 * one-pass reading turned off (the scan and jansson alone): both must
 * give the same answer, the same message and the same count, so every
 * case of this file is also a test of that reading against jansson.
 */

static dify_body_rc_e
validate(const char *body, size_t len, const dify_body_conf_t *conf,
    dify_body_result_t *res)
{
    size_t              i;
    unsigned char      *copy;
    dify_body_rc_e      rc, slow_rc;
    dify_body_conf_t    slow;
    dify_body_result_t  slow_res;

    copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, body, len);

    slow = *conf;
    slow.no_fast = 1;

    memset(&slow_res, 'X', sizeof(dify_body_result_t));
    slow_rc = both_ways ? dify_body_validate(copy, len, &slow, &slow_res)
                        : DIFY_BODY_OK;

    memset(res, 'X', sizeof(dify_body_result_t));

    rc = dify_body_validate(copy, len, conf, res);

    free(copy);

    validated++;
    fast_decided += res->fast;

    if (both_ways && !conf->no_fast) {
        assert_int_equal(slow_res.fast, 0);
        assert_int_equal(rc, slow_rc);
        assert_string_equal(res->message, slow_res.message);

        if (rc == DIFY_BODY_OK) {
            assert_int_equal(res->documents, slow_res.documents);
        }
    }

    assert_true(memchr(res->message, '\0', DIFY_BODY_MESSAGE_LEN) != NULL);

    if (rc != DIFY_BODY_OK) {
        assert_int_equal(res->documents, 0);
    }

    if (rc == DIFY_BODY_BAD_REQUEST) {
        /* for the log: not empty, printable */
        assert_true(res->message[0] != '\0');

        for (i = 0; res->message[i] != '\0'; i++) {
            assert_true(res->message[i] >= 0x20 && res->message[i] < 0x7f);
        }
    }

    if (rc == DIFY_BODY_INVALID_PARAM) {
        assert_memory_equal(res->message, "document_ids", 12);
    }

    if (rc == DIFY_BODY_TOO_MANY_VALUES) {
        /* for the client */
        assert_memory_equal(res->message, "Request body must not hold ", 27);
    }

    return rc;
}


static void
body_ok(const char *body, size_t len, const dify_body_conf_t *conf,
    size_t documents)
{
    dify_body_rc_e      rc;
    dify_body_result_t  res;

    rc = validate(body, len, conf, &res);

    if (rc != DIFY_BODY_OK) {
        fail_msg("%.*s: rc %d, \"%s\"", (int) len, body, rc, res.message);
    }

    assert_int_equal(res.documents, documents);
}


static void
body_bad(const char *body, size_t len, const dify_body_conf_t *conf)
{
    dify_body_rc_e      rc;
    dify_body_result_t  res;

    rc = validate(body, len, conf, &res);

    if (rc != DIFY_BODY_BAD_REQUEST) {
        fail_msg("%.*s: rc %d, \"%s\"", (int) len, body, rc, res.message);
    }
}


static void
body_param(const char *body, size_t len, const dify_body_conf_t *conf,
    const char *message)
{
    dify_body_rc_e      rc;
    dify_body_result_t  res;

    rc = validate(body, len, conf, &res);

    if (rc != DIFY_BODY_INVALID_PARAM || strcmp(res.message, message) != 0) {
        fail_msg("%.*s: rc %d, \"%s\", expected \"%s\"", (int) len, body, rc,
                 res.message, message);
    }
}


/* BAD_REQUEST, for this reason (in the log) */

static void
body_because(const char *body, size_t len, const dify_body_conf_t *conf,
    const char *message)
{
    dify_body_rc_e      rc;
    dify_body_result_t  res;

    rc = validate(body, len, conf, &res);

    if (rc != DIFY_BODY_BAD_REQUEST || strcmp(res.message, message) != 0) {
        fail_msg("%.*s: rc %d, \"%s\", expected \"%s\"", (int) len, body, rc,
                 res.message, message);
    }
}


/* the body is a literal, NUL bytes in it included */
#define OK(c, b, n)     body_ok(b, sizeof(b) - 1, &c, n)
#define BAD(c, b)       body_bad(b, sizeof(b) - 1, &c)
#define BOM(c, b)       body_because(b, sizeof(b) - 1, &c, BOM_MSG)
#define PARAM(c, b, m)  body_param(b, sizeof(b) - 1, &c, m)


static void
test_valid(void **state)
{
    (void) state;

    OK(conf_uuid, "{\"document_ids\": [\"" U1 "\"]}", 1);
    OK(conf_uuid, "{\"document_ids\":[\"" U1 "\",\"" U2 "\",\"" U3 "\"]}", 3);
    OK(conf_uuid, "{\"document_ids\": [\"" U1_UPPER "\"]}", 1);
    OK(conf_uuid, "{\"document_ids\": []}", 0);
    OK(conf_uuid, " \t\r\n{ \"document_ids\" : [ ] } \n\t\r ", 0);

    /* other members, at any depth, are not looked at */
    OK(conf_uuid, "{\"a\": 1, \"document_ids\": [], \"b\": {\"document_ids\": "
       "5, \"c\": [null, true, false, 1.5e3, -0, \"x\", {}, []]}}", 0);
    OK(conf_uuid, "{\"Document_ids\": 1, \"document_ids\": []}", 0);
    OK(conf_uuid, "{\"document_ids \": 1, \"document_ids\": []}", 0);

    /* an escaped key is the same key */
    OK(conf_uuid, "{\"document\\u005fids\": [\"" U1 "\"]}", 1);

    /* escapes in an id */
    OK(conf_uuid, "{\"document_ids\": [\"\\u0033f2504e0-4f89-11d3-9a0c-"
       "0305e82c3301\"]}", 1);
    PARAM(conf_uuid, "{\"document_ids\": [\"3f2504e0\\/4f89-11d3-9a0c-"
          "0305e82c3301\"]}", BAD_UUID_MSG(0));
}


static void
test_not_json(void **state)
{
    dify_body_result_t  res;

    (void) state;

    assert_int_equal(dify_body_validate(NULL, 0, &conf_uuid, &res),
                     DIFY_BODY_BAD_REQUEST);
    assert_int_equal(res.documents, 0);
    assert_true(res.message[0] != '\0');

    BAD(conf_uuid, "");
    BAD(conf_uuid, " ");
    BAD(conf_uuid, "\r\n\t ");
    BAD(conf_uuid, "{");
    BAD(conf_uuid, "}");
    BAD(conf_uuid, "{\"document_ids\": [}");
    BAD(conf_uuid, "{\"document_ids\": []");
    BAD(conf_uuid, "{\"document_ids\": [],}");
    BAD(conf_uuid, "{\"document_ids\": [\"" U1 "\",]}");
    BAD(conf_uuid, "{'document_ids': []}");
    BAD(conf_uuid, "{document_ids: []}");
    BAD(conf_uuid, "{\"document_ids\" []}");
    BAD(conf_uuid, "{\"document_ids\": [] /* c */}");
    BAD(conf_uuid, "// c\n{\"document_ids\": []}");
    BAD(conf_uuid, "{\"document_ids\": []} x");
    BAD(conf_uuid, "{\"document_ids\": []}{}");
    BAD(conf_uuid, "{\"document_ids\": []}\n{\"document_ids\": []}");
    BAD(conf_uuid, "{\"document_ids\": []}]");

    /* not JSON numbers, though Python reads some */
    BAD(conf_uuid, "{\"document_ids\": [], \"n\": NaN}");
    BAD(conf_uuid, "{\"document_ids\": [], \"n\": Infinity}");
    BAD(conf_uuid, "{\"document_ids\": [], \"n\": -Infinity}");
    BAD(conf_uuid, "{\"document_ids\": [], \"n\": 01}");
    BAD(conf_uuid, "{\"document_ids\": [], \"n\": +1}");
    BAD(conf_uuid, "{\"document_ids\": [], \"n\": .5}");
    BAD(conf_uuid, "{\"document_ids\": [], \"n\": 1.}");
    BAD(conf_uuid, "{\"document_ids\": [], \"n\": 0x10}");
    BAD(conf_uuid, "{\"document_ids\": [], \"n\": 1e}");

    /* bad escapes and literals */
    BAD(conf_uuid, "{\"document_ids\": [], \"s\": \"\\x41\"}");
    BAD(conf_uuid, "{\"document_ids\": [], \"s\": \"\\u12\"}");
    BAD(conf_uuid, "{\"document_ids\": [], \"s\": \"\\\"}");
    BAD(conf_uuid, "{\"document_ids\": [], \"s\": \"\\'\"}");
    BAD(conf_uuid, "{\"document_ids\": [], \"t\": True}");
    BAD(conf_uuid, "{\"document_ids\": [], \"t\": nul}");
    BAD(conf_uuid, "{\"document_ids\": [], \"t\": None}");

    /* raw control characters in a string */
    BAD(conf_uuid, "{\"document_ids\": [], \"s\": \"a\nb\"}");
    BAD(conf_uuid, "{\"document_ids\": [], \"s\": \"a\tb\"}");
    BAD(conf_uuid, "{\"document_ids\": [], \"s\": \"\x1f\"}");

    /* JSON whitespace only: no vertical tab, form feed or NBSP */
    BAD(conf_uuid, "\v{\"document_ids\": []}");
    BAD(conf_uuid, "\f{\"document_ids\": []}");
    BAD(conf_uuid, "\xc2\xa0{\"document_ids\": []}");
}


static void
test_not_object(void **state)
{
    (void) state;

    /* jansson without JSON_DECODE_ANY refuses these in the parser */
    BAD(conf_uuid, "[]");
    BAD(conf_uuid, "[{\"document_ids\": []}]");
    BAD(conf_uuid, "\"document_ids\"");
    BAD(conf_uuid, "1");
    BAD(conf_uuid, "-1.5e3");
    BAD(conf_uuid, "null");
    BAD(conf_uuid, "true");
    BAD(conf_uuid, "false");
}


static void
test_duplicate_keys(void **state)
{
    (void) state;

    /* the bypass the contract warns of: Python keeps the last one */
    BAD(conf_uuid, "{\"document_ids\":[\"" U1 "\"],\"document_ids\":5}");
    BAD(conf_uuid, "{\"document_ids\":[],\"document_ids\":[]}");
    BAD(conf_any, "{\"document_ids\":[\"x\"],\"document_ids\":[\"x\"]}");

    /* the same key spelt with escapes */
    BAD(conf_uuid, "{\"document_ids\":[],\"document\\u005fids\":[]}");
    BAD(conf_uuid, "{\"document\\u005fids\":[],\"document_ids\":[]}");
    BAD(conf_uuid, "{\"document_ids\":[],\"\\u0064ocument_ids\":1}");
    BAD(conf_uuid, "{\"document_ids\":[],\"document_id\\u0073\":1}");
    BAD(conf_uuid, "{\"document_ids\":[],\"document_ids\\u0000\":1}");
    BAD(conf_uuid, "{\"document_ids\":[],\"a\\/b\":1,\"a/b\":2}");
    BAD(conf_uuid, "{\"document_ids\":[],\"\\u00e9\":1,\"\xc3\xa9\":2}");
    BAD(conf_uuid, "{\"document_ids\":[],\"\\ud83d\\ude00\":1,"
        "\"\xf0\x9f\x98\x80\":2}");

    /* at any depth */
    BAD(conf_uuid, "{\"document_ids\":[],\"a\":{\"b\":1,\"b\":2}}");
    BAD(conf_uuid, "{\"document_ids\":[],\"a\":[{\"b\":1,\"b\":2}]}");
    BAD(conf_uuid, "{\"a\":[[[{\"x\":{\"b\":1,\"b\":2}}]]],"
        "\"document_ids\":[]}");
    BAD(conf_uuid, "{\"document_ids\":[],\"a\":{\"\":1,\"\":2}}");

    /* equal keys in different objects, or different keys: fine */
    OK(conf_uuid, "{\"document_ids\":[],\"a\":{\"b\":1},\"c\":{\"b\":2}}", 0);
    OK(conf_uuid, "{\"document_ids\":[],\"a\":[{\"b\":1},{\"b\":2}]}", 0);
    OK(conf_uuid, "{\"document_ids\":[],\"b\":1,\"B\":2,\"b \":3}", 0);
    OK(conf_uuid, "{\"document_ids\":[],\"a\":{\"document_ids\":1}}", 0);
    OK(conf_uuid, "{\"document_ids\":[],\"\":1}", 0);
}


static void
test_utf8(void **state)
{
    (void) state;

    OK(conf_uuid, "{\"document_ids\":[],\"s\":\"caf\xc3\xa9 \xe2\x82\xac "
       "\xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf\"}", 0);
    OK(conf_uuid, "{\"document_ids\":[],\"caf\xc3\xa9\":1}", 0);
    OK(conf_uuid, "{\"document_ids\":[],\"s\":\"\\ud83d\\ude00\"}", 0);
    OK(conf_uuid, "{\"document_ids\":[],\"s\":\"\xef\xbf\xbf\"}", 0);

    /* not UTF-8 */
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\xff\"}");
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\xfe\"}");
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\x80\"}");
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\xbf\"}");
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"caf\xe9\"}");
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\xc3\"}");
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\xe2\x82\"}");
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\xf0\x9f\x98\"}");
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\xc3\xc3\"}");

    /* overlong forms, surrogates, beyond U+10FFFF */
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\xc0\xaf\"}");
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\xc1\xbf\"}");
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\xe0\x80\xaf\"}");
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\xf0\x80\x80\xaf\"}");
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\xed\xa0\x80\"}");
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\xed\xbf\xbf\"}");
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\xf4\x90\x80\x80\"}");
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\xf8\x88\x80\x80\x80\"}");

    /* in a key, in an id, outside strings */
    BAD(conf_uuid, "{\"document_ids\":[],\"\xff\":1}");
    BAD(conf_any, "{\"document_ids\":[\"\xff\"]}");
    BAD(conf_uuid, "{\"document_ids\":[]}\xff");
    BAD(conf_uuid, "\xff{\"document_ids\":[]}");

    /* lone surrogates in escapes (Python takes them; jansson does not) */
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\\ud800\"}");
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\\udc00\"}");
    BAD(conf_uuid, "{\"document_ids\":[],\"s\":\"\\ud83d\\u0041\"}");

    /* UTF-16, which Python detects and jansson does not */
    BAD(conf_uuid, "{\0\"\0a\0\"\0:\0""1\0}\0");
}


static void
test_bom(void **state)
{
    (void) state;

    /* orjson refuses a UTF-8 byte order mark (json.loads() skips one) */
    BOM(conf_uuid, "\xef\xbb\xbf{\"document_ids\": [\"" U1 "\"]}");
    BOM(conf_uuid, "\xef\xbb\xbf {\"document_ids\": []}");
    BOM(conf_any_nocap, "\xef\xbb\xbf{\"document_ids\": []}");

    BOM(conf_uuid, "\xef\xbb\xbf");
    BOM(conf_uuid, "\xef\xbb\xbf ");
    BAD(conf_uuid, "\xef\xbb");
    BOM(conf_uuid, "\xef\xbb\xbf\xef\xbb\xbf{\"document_ids\": []}");
    BAD(conf_uuid, " \xef\xbb\xbf{\"document_ids\": []}");
    BAD(conf_uuid, "{\"document_ids\": []}\xef\xbb\xbf");
    BAD(conf_uuid, "{\xef\xbb\xbf\"document_ids\": []}");
    BOM(conf_uuid, "\xef\xbb\xbf[]");

    /* U+FEFF inside a string is a character like any other */
    OK(conf_uuid, "{\"document_ids\": [], \"s\": \"\xef\xbb\xbf\"}", 0);
    OK(conf_uuid, "{\"document_ids\": [], \"s\": \"\\ufeff\"}", 0);
    PARAM(conf_uuid, "{\"\xef\xbb\xbf" "document_ids\": []}", REQUIRED_MSG);
}


static void
test_nul(void **state)
{
    (void) state;

    /* raw NUL bytes: nowhere */
    BAD(conf_uuid, "\0");
    BAD(conf_uuid, "\0{\"document_ids\": []}");
    BAD(conf_uuid, "{\"document_ids\": []}\0");
    BAD(conf_uuid, "{\"document_ids\": []\0}");
    BAD(conf_uuid, "{\"document_ids\": [], \"s\": \"a\0b\"}");
    BAD(conf_any, "{\"document_ids\": [\"a\0b\"]}");

    /* an escaped one, in a value: yes (JSON_ALLOW_NUL) */
    OK(conf_uuid, "{\"document_ids\": [], \"s\": \"a\\u0000b\"}", 0);
    OK(conf_any, "{\"document_ids\": [\"a\\u0000b\"]}", 1);
    PARAM(conf_uuid, "{\"document_ids\": [\"\\u0000\"]}", BAD_UUID_MSG(0));
    PARAM(conf_uuid, "{\"document_ids\": [\"3f2504e0-4f89-11d3-9a0c-"
          "0305e82c330\\u0000\"]}", BAD_UUID_MSG(0));
    PARAM(conf_uuid, "{\"document_ids\": [\"" U1 "\\u0000\"]}",
          BAD_UUID_MSG(0));

    /* jansson refuses NUL in keys, which Python would take */
    BAD(conf_uuid, "{\"document_ids\": [], \"a\\u0000\": 1}");
    BAD(conf_uuid, "{\"document_ids\\u0000\": []}");
}


static void
test_numbers(void **state)
{
    (void) state;

    /* beyond 64 bits, as Python reads them */
    OK(conf_uuid, "{\"document_ids\": [], \"n\": 9223372036854775808}", 0);
    OK(conf_uuid, "{\"document_ids\": [], \"n\": -9223372036854775809}", 0);
    OK(conf_uuid, "{\"document_ids\": [], \"n\": "
       "123456789012345678901234567890123456789012345678901234567890}", 0);
    OK(conf_uuid, "{\"document_ids\": [], \"n\": 1e308}", 0);
    OK(conf_uuid, "{\"document_ids\": [], \"n\": 1e-400}", 0);
    OK(conf_uuid, "{\"document_ids\": [], \"n\": -0.0E+0}", 0);

    /* Python makes inf of these; jansson refuses them */
    BAD(conf_uuid, "{\"document_ids\": [], \"n\": 1e400}");
    BAD(conf_uuid, "{\"document_ids\": [], \"n\": -1e400}");

    BAD(conf_uuid, "{\"document_ids\": [1e400]}");
    PARAM(conf_uuid, "{\"document_ids\": [1e300]}", NOT_STRING_MSG(0));
}


/* head, n times item (sep between), tail */

static char *
repeat(const char *head, size_t n, const char *item, const char *sep,
    const char *tail, size_t *len)
{
    char    *body, *p;
    size_t   i;

    body = malloc(strlen(head) + n * (strlen(item) + strlen(sep))
                  + strlen(tail) + 1);
    assert_non_null(body);

    p = body;
    p += sprintf(p, "%s", head);

    for (i = 0; i < n; i++) {
        p += sprintf(p, "%s%s", i ? sep : "", item);
    }

    p += sprintf(p, "%s", tail);

    *len = p - body;

    return body;
}


/* x holds n times open, then inner, then n times close */

static char *
nested(size_t n, const char *open, const char *inner, const char *close,
    size_t *len)
{
    char        *body, *p;
    size_t       i, no, nc;
    static char  head[] = "{\"document_ids\": [], \"x\": ";

    no = strlen(open);
    nc = strlen(close);

    body = malloc(sizeof(head) + n * (no + nc) + strlen(inner) + 2);
    assert_non_null(body);

    p = memcpy(body, head, sizeof(head) - 1);
    p += sizeof(head) - 1;

    for (i = 0; i < n; i++) {
        p = (char *) memcpy(p, open, no) + no;
    }

    p = (char *) memcpy(p, inner, strlen(inner)) + strlen(inner);

    for (i = 0; i < n; i++) {
        p = (char *) memcpy(p, close, nc) + nc;
    }

    *p++ = '}';

    *len = p - body;

    return body;
}


static void
test_depth(void **state)
{
    char    *body;
    size_t   i, n, len, depth, levels;

    static const struct {
        const char  *open;
        const char  *inner;
        const char  *close;
        size_t       levels;            /* of each open */
        size_t       inner_levels;
    } shapes[] = {
        { "[", "0", "]", 1, 0 },
        { "[", "[]", "]", 1, 1 },
        { "{\"a\": ", "{}", "}", 1, 1 },
        { "[{\"a\": ", "0", "}]", 2, 0 },
        { "[\"[\", {\"{\": ", "\"]}\"", "}]", 2, 0 },
        { "[ ", "[\"\\\\\"]", " ]", 1, 1 }
    };

    (void) state;

    /*
     * A batch body has 2 levels, the root object's included; up to
     * DIFY_BODY_MAX_DEPTH pass, one more does not.
     */

    assert_int_equal(DIFY_BODY_MAX_DEPTH, 64);

    for (i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        for (depth = 2; depth <= 70; depth++) {

            /* the root, then n opens, then the inner value */

            levels = depth - 1 - shapes[i].inner_levels;

            if (levels % shapes[i].levels != 0) {
                continue;
            }

            n = levels / shapes[i].levels;

            body = nested(n, shapes[i].open, shapes[i].inner, shapes[i].close,
                          &len);

            if (depth <= DIFY_BODY_MAX_DEPTH) {
                body_ok(body, len, &conf_uuid, 0);

            } else {
                body_because(body, len, &conf_uuid, DEEP_MSG);
            }

            free(body);
        }
    }

    /* at the root too; brackets in strings and keys do not count */

    body = repeat("", 65, "[", "", "", &len);
    body_because(body, len, &conf_uuid, DEEP_MSG);
    free(body);

    body = repeat("", 64, "[", "", "", &len);
    body_bad(body, len, &conf_uuid);
    free(body);

    body = repeat("{\"document_ids\": [], \"s\": \"", 100, "[{", "", "\"}",
                  &len);
    body_ok(body, len, &conf_uuid, 0);
    free(body);

    body = repeat("{\"document_ids\": [], \"s\": \"\\\"", 100, "[",
                  "\\\\", "\"}", &len);
    body_ok(body, len, &conf_uuid, 0);
    free(body);

    body = repeat("{\"document_ids\": [], \"", 100, "[", "\\\"", "\": 1}",
                  &len);
    body_ok(body, len, &conf_uuid, 0);
    free(body);

    /* closing more than was opened does not lower the count */

    body = repeat("{\"document_ids\": []}", 100, "]", "", "", &len);
    body_bad(body, len, &conf_uuid);
    free(body);

    body = repeat("]]]]]]]]]]}}}}}}}}}}", 65, "[", "", "", &len);
    body_because(body, len, &conf_uuid, DEEP_MSG);
    free(body);

    /* deep nesting ends in an error, not in a stack overflow: any depth */

    for (depth = 65; depth <= 1000000; depth *= 10) {
        body = nested(depth, "[", "[]", "]", &len);

        body_because(body, len, &conf_uuid, DEEP_MSG);
        body_bad(body, len, &conf_any_nocap);

        /* unterminated */
        body_bad(body, len / 2, &conf_uuid);

        free(body);

        body = nested(depth, "{\"a\":", "{}", "}", &len);
        body_bad(body, len, &conf_nocap);
        free(body);
    }
}


static void
body_too_many(const char *body, size_t len, const dify_body_conf_t *conf,
    size_t max)
{
    char                expect[DIFY_BODY_MESSAGE_LEN];
    dify_body_rc_e      rc;
    dify_body_result_t  res;

    rc = validate(body, len, conf, &res);

    sprintf(expect, "Request body must not hold more than %zu JSON values.",
            max);

    if (rc != DIFY_BODY_TOO_MANY_VALUES || strcmp(res.message, expect) != 0) {
        fail_msg("%.*s: rc %d, \"%s\", expected \"%s\"", (int) len, body, rc,
                 res.message, expect);
    }
}


#define TOO_MANY(c, b, m)  body_too_many(b, sizeof(b) - 1, &c, m)

/* the root object and document_ids: 2 values */
#define X_HEAD  "{\"document_ids\": [], \"x\": ["


static void
test_values(void **state)
{
    char              *body;
    size_t             i, n, len, max;
    dify_body_conf_t   conf;

    static const struct {
        const char  *value;
        size_t       values;            /* in it */
    } kinds[] = {
        { "0", 1 }, { "-1.5e3", 1 }, { "true", 1 }, { "null", 1 },
        { "\"\"", 1 }, { "\"a,b]\\\",:{\"", 1 }, { "\"\\\\\"", 1 },
        { "{}", 1 }, { "[]", 1 }, { "{\"k\": 0}", 2 }, { "[0]", 2 },
        { "{\"k\": {\"k\": [null, \"k\"]}}", 5 }, { " 0 ", 1 }
    };

    (void) state;

    assert_int_equal(DIFY_BODY_EXTRA_VALUES, 64);

    /* the root, document_ids, max_documents ids and 64 more */

    max = conf_uuid.max_documents + 2 + DIFY_BODY_EXTRA_VALUES;

    for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {

        /* 3 values beside them: the root, document_ids and x */

        n = (max - 3) / kinds[i].values;
        body = repeat(X_HEAD, n, kinds[i].value, ",", "]}", &len);
        body_ok(body, len, &conf_uuid, 0);
        free(body);

        body = repeat(X_HEAD, n + 1, kinds[i].value, ",", "]}", &len);
        body_too_many(body, len, &conf_uuid, max);
        free(body);

        /* no cap on the ids, no budget */
        body = repeat(X_HEAD, max * 10, kinds[i].value, ",", "]}", &len);
        body_ok(body, len, &conf_nocap, 0);
        free(body);
    }

    /* ids count, keys do not: 13 values, then n */

    conf = conf_any;
    conf.max_documents = 2;

    body = repeat("{\"document_ids\": [\"a\", \"b\"], \"k1\": 1, \"k2\": [], "
                  "\"k3\": {\"k4\": \"\", \"k5\": null}, \"k6\": [{}, {}, []",
                  68 - 13, ", 1", "", "]}", &len);
    body_ok(body, len, &conf, 2);
    free(body);

    body = repeat("{\"document_ids\": [\"a\", \"b\"], \"k1\": 1, \"k2\": [], "
                  "\"k3\": {\"k4\": \"\", \"k5\": null}, \"k6\": [{}, {}, []",
                  68 - 13 + 1, ", 1", "", "]}", &len);
    body_too_many(body, len, &conf, 68);
    free(body);

    body = repeat("{", 66, "\"k\\u0000\\\"\": 1", ", ", "}", &len);
    body_bad(body, len, &conf);
    free(body);

    body = repeat("{", 68, "\"k\\u0000\\\"\": 1", ", ", "}", &len);
    body_too_many(body, len, &conf, 68);
    free(body);

    /* more ids than the cap, within the budget: row 7 says so */

    conf.max_documents = 1;

    body = repeat("{\"document_ids\": [", 65, "\"a\"", ", ", "]}", &len);
    body_param(body, len, &conf,
               "document_ids must not contain more than 1 items.");
    free(body);

    body = repeat("{\"document_ids\": [", 66, "\"a\"", ", ", "]}", &len);
    body_too_many(body, len, &conf, 67);
    free(body);

    /* counted before jansson runs: what follows is never looked at */

    body = repeat(X_HEAD, 65, "1", ", ", "], x x x", &len);
    body_too_many(body, len, &conf, 67);
    free(body);

    body = repeat(X_HEAD, 65, "1", ", ", "], \"a\": 1, \"a\": 2}", &len);
    body_too_many(body, len, &conf, 67);
    free(body);

    /* garbage counts too, as what jansson could build before it stops */

    body = repeat("[", 67, "1", " ", "]", &len);
    body_too_many(body, len, &conf, 67);
    free(body);

    body = repeat("[", 67, "tru", ",", "", &len);
    body_too_many(body, len, &conf, 67);
    free(body);

    body = repeat("{\"k\": [", 66, "1", ",", "], \"x\":::::::::::::::]}", &len);
    body_too_many(body, len, &conf, 67);
    free(body);

    /* the first limit the body reaches answers */

    body = repeat(X_HEAD, DIFY_BODY_MAX_DEPTH - 1, "[", "", "", &len);
    body_because(body, len, &conf, DEEP_MSG);
    free(body);

    body = repeat(X_HEAD, 65, "1", ", ", ", [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
                  "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", &len);
    body_too_many(body, len, &conf, 67);
    free(body);

    /* a cap too large to add to: no budget */

    conf.max_documents = SIZE_MAX - 2 - DIFY_BODY_EXTRA_VALUES;
    body = repeat(X_HEAD, 100, "0", ",", "]}", &len);
    body_ok(body, len, &conf, 0);

    conf.max_documents++;
    body_ok(body, len, &conf, 0);
    free(body);
}


static void
test_field(void **state)
{
    (void) state;

    PARAM(conf_uuid, "{}", REQUIRED_MSG);
    PARAM(conf_uuid, "{\"Document_ids\": []}", REQUIRED_MSG);
    PARAM(conf_uuid, "{\"document_id\": []}", REQUIRED_MSG);
    PARAM(conf_uuid, "{\"documentIds\": []}", REQUIRED_MSG);
    PARAM(conf_uuid, "{\"a\": {\"document_ids\": []}}", REQUIRED_MSG);
    PARAM(conf_any, "{\"ids\": [\"x\"]}", REQUIRED_MSG);

    PARAM(conf_uuid, "{\"document_ids\": null}", NOT_ARRAY_MSG);
    PARAM(conf_uuid, "{\"document_ids\": \"" U1 "\"}", NOT_ARRAY_MSG);
    PARAM(conf_uuid, "{\"document_ids\": {}}", NOT_ARRAY_MSG);
    PARAM(conf_uuid, "{\"document_ids\": {\"0\": \"" U1 "\"}}",
          NOT_ARRAY_MSG);
    PARAM(conf_uuid, "{\"document_ids\": 0}", NOT_ARRAY_MSG);
    PARAM(conf_uuid, "{\"document_ids\": 1.5}", NOT_ARRAY_MSG);
    PARAM(conf_uuid, "{\"document_ids\": true}", NOT_ARRAY_MSG);
    PARAM(conf_uuid, "{\"document_ids\": false}", NOT_ARRAY_MSG);
    PARAM(conf_any, "{\"document_ids\": \"\"}", NOT_ARRAY_MSG);
}


static void
test_cap(void **state)
{
    dify_body_conf_t  conf;

    (void) state;

    conf = conf_uuid;
    conf.max_documents = 3;

    OK(conf, "{\"document_ids\": [\"" U1 "\",\"" U2 "\",\"" U3 "\"]}", 3);
    PARAM(conf, "{\"document_ids\": [\"" U1 "\",\"" U2 "\",\"" U3 "\",\""
          U1_UPPER "\"]}",
          "document_ids must not contain more than 3 items.");

    /* the cap is looked at before the items */
    conf.max_documents = 1;

    OK(conf, "{\"document_ids\": [\"" U1 "\"]}", 1);
    PARAM(conf, "{\"document_ids\": [1, 2]}",
          "document_ids must not contain more than 1 items.");
    PARAM(conf, "{\"document_ids\": [\"" U1 "\", \"" U1 "\"]}",
          "document_ids must not contain more than 1 items.");
    PARAM(conf, "{\"document_ids\": [5]}", NOT_STRING_MSG(0));

    conf.max_documents = SIZE_MAX;
    OK(conf, "{\"document_ids\": [\"" U1 "\"]}", 1);

    conf.max_documents = SIZE_MAX - 1;
    OK(conf, "{\"document_ids\": []}", 0);

    /* the longest message fits */
    conf.max_documents = 1;
    conf.ids_any = 1;
    PARAM(conf, "{\"document_ids\": [\"a\", \"b\"]}",
          "document_ids must not contain more than 1 items.");

    /* 0: no cap */
    OK(conf_nocap, "{\"document_ids\": [\"" U1 "\",\"" U2 "\",\"" U3 "\"]}",
       3);
}


static void
test_items(void **state)
{
    (void) state;

    PARAM(conf_uuid, "{\"document_ids\": [1]}", NOT_STRING_MSG(0));
    PARAM(conf_uuid, "{\"document_ids\": [null]}", NOT_STRING_MSG(0));
    PARAM(conf_uuid, "{\"document_ids\": [true]}", NOT_STRING_MSG(0));
    PARAM(conf_uuid, "{\"document_ids\": [[\"" U1 "\"]]}", NOT_STRING_MSG(0));
    PARAM(conf_uuid, "{\"document_ids\": [{}]}", NOT_STRING_MSG(0));
    PARAM(conf_uuid, "{\"document_ids\": [\"" U1 "\",\"" U2 "\",\"" U3 "\","
          "1.5]}", NOT_STRING_MSG(3));
    PARAM(conf_any, "{\"document_ids\": [\"a\", \"b\", \"c\", 7]}",
          NOT_STRING_MSG(3));

    PARAM(conf_uuid, "{\"document_ids\": [\"\"]}", BAD_UUID_MSG(0));
    PARAM(conf_uuid, "{\"document_ids\": [\"x\"]}", BAD_UUID_MSG(0));
    PARAM(conf_uuid, "{\"document_ids\": [\"" U1 "\",\"" U2 "\",\"" U3 "\","
          "\"3f2504e0-4f89-11d3-9a0c-0305e82c330\"]}", BAD_UUID_MSG(3));
    PARAM(conf_uuid, "{\"document_ids\": "
          "[\"3f2504e0-4f89-11d3-9a0c-0305e82c33011\"]}", BAD_UUID_MSG(0));
    PARAM(conf_uuid, "{\"document_ids\": "
          "[\"3f2504e0-4f89-11d3-9a0c-0305e82c330g\"]}", BAD_UUID_MSG(0));
    PARAM(conf_uuid, "{\"document_ids\": "
          "[\"3f2504e04f8911d39a0c0305e82c3301\"]}", BAD_UUID_MSG(0));
    PARAM(conf_uuid, "{\"document_ids\": "
          "[\"{3f2504e0-4f89-11d3-9a0c-0305e82c3301}\"]}", BAD_UUID_MSG(0));
    PARAM(conf_uuid, "{\"document_ids\": "
          "[\" 3f2504e0-4f89-11d3-9a0c-0305e82c330\"]}", BAD_UUID_MSG(0));
    PARAM(conf_uuid, "{\"document_ids\": "
          "[\"3f2504e0-4f89-11d3-9a0c-0305e82c33\\u00e9\"]}",
          BAD_UUID_MSG(0));

    /* the first bad item wins, whatever is wrong with it */
    PARAM(conf_uuid, "{\"document_ids\": [\"" U1 "\", \"x\", 5]}",
          BAD_UUID_MSG(1));
    PARAM(conf_uuid, "{\"document_ids\": [\"" U1 "\", 5, \"x\"]}",
          NOT_STRING_MSG(1));

    /* and an item error is reported before a duplicate */
    PARAM(conf_uuid, "{\"document_ids\": [\"" U1 "\", \"" U1 "\", 5]}",
          NOT_STRING_MSG(2));
    PARAM(conf_uuid, "{\"document_ids\": [\"" U1 "\", \"" U1 "\", \"x\"]}",
          BAD_UUID_MSG(2));

    /* "any": any string */
    OK(conf_any, "{\"document_ids\": [\"\", \"x\", \"" U1 "\", \" \", "
       "\"\\u0000\", \"\\ud83d\\ude00\"]}", 6);
}


static void
test_duplicate_ids(void **state)
{
    (void) state;

    PARAM(conf_uuid, "{\"document_ids\": [\"" U1 "\", \"" U1 "\"]}",
          "document_ids[1] duplicates document_ids[0].");
    PARAM(conf_uuid, "{\"document_ids\": [\"" U1 "\", \"" U2 "\", \"" U1
          "\"]}", "document_ids[2] duplicates document_ids[0].");

    /* UUIDs compare case-insensitively */
    PARAM(conf_uuid, "{\"document_ids\": [\"" U1 "\", \"" U1_UPPER "\"]}",
          "document_ids[1] duplicates document_ids[0].");
    PARAM(conf_uuid, "{\"document_ids\": [\"" U2 "\", \"" U1_UPPER "\", \""
          "3f2504E0-4F89-11d3-9A0c-0305e82C3301\"]}",
          "document_ids[2] duplicates document_ids[1].");

    /* the first repetition in document order, and what it repeats */
    PARAM(conf_uuid, "{\"document_ids\": [\"" U1 "\", \"" U2 "\", \"" U2
          "\", \"" U1 "\"]}", "document_ids[2] duplicates document_ids[1].");
    PARAM(conf_uuid, "{\"document_ids\": [\"" U1 "\", \"" U2 "\", \"" U1
          "\", \"" U2 "\"]}", "document_ids[2] duplicates document_ids[0].");
    PARAM(conf_uuid, "{\"document_ids\": [\"" U1 "\", \"" U1 "\", \"" U1
          "\"]}", "document_ids[1] duplicates document_ids[0].");
    PARAM(conf_uuid, "{\"document_ids\": [\"" U3 "\", \"" U1 "\", \"" U2
          "\", \"" U1 "\", \"" U1 "\", \"" U3 "\"]}",
          "document_ids[3] duplicates document_ids[1].");

    /* UUIDs that differ in a single bit of either half */
    OK(conf_uuid, "{\"document_ids\": ["
       "\"00000000-0000-0000-0000-000000000000\","
       "\"00000000-0000-0000-0000-000000000001\","
       "\"10000000-0000-0000-0000-000000000000\","
       "\"00000000-0000-0001-0000-000000000000\","
       "\"00000000-0000-0000-8000-000000000000\","
       "\"ffffffff-ffff-ffff-ffff-ffffffffffff\","
       "\"ffffffff-ffff-ffff-ffff-fffffffffffe\","
       "\"7fffffff-ffff-ffff-ffff-ffffffffffff\"]}", 8);
    PARAM(conf_uuid, "{\"document_ids\": ["
          "\"ffffffff-ffff-ffff-ffff-ffffffffffff\","
          "\"00000000-0000-0000-0000-000000000000\","
          "\"FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF\"]}",
          "document_ids[2] duplicates document_ids[0].");

    /* allowed when so configured */
    OK(conf_dups, "{\"document_ids\": [\"" U1 "\", \"" U1 "\", \"" U1_UPPER
       "\"]}", 3);
    OK(conf_any_dups, "{\"document_ids\": [\"a\", \"a\"]}", 2);
}


static void
test_duplicate_ids_any(void **state)
{
    (void) state;

    PARAM(conf_any, "{\"document_ids\": [\"a\", \"a\"]}",
          "document_ids[1] duplicates document_ids[0].");
    PARAM(conf_any, "{\"document_ids\": [\"\", \"x\", \"\"]}",
          "document_ids[2] duplicates document_ids[0].");

    /* compared exactly: case, length, escapes decoded, NUL bytes */
    OK(conf_any, "{\"document_ids\": [\"a\", \"A\", \"a \", \" a\", \"ab\", "
       "\"\"]}", 6);
    OK(conf_any, "{\"document_ids\": [\"" U1 "\", \"" U1_UPPER "\"]}", 2);
    OK(conf_any, "{\"document_ids\": [\"a\", \"a\\u0000\", \"a\\u0000b\", "
       "\"a\\u0000c\", \"\\u0000\"]}", 5);
    PARAM(conf_any, "{\"document_ids\": [\"a\\u0000b\", \"a\\u0000b\"]}",
          "document_ids[1] duplicates document_ids[0].");
    PARAM(conf_any, "{\"document_ids\": [\"a\", \"\\u0061\"]}",
          "document_ids[1] duplicates document_ids[0].");
    PARAM(conf_any, "{\"document_ids\": [\"\xc3\xa9\", \"\\u00e9\"]}",
          "document_ids[1] duplicates document_ids[0].");
}


/* xorshift64: the same sequence on every run */

static uint64_t
next_random(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;

    return *s;
}


typedef struct {
    const char  *json;              /* as written in the body */
    const char  *value;             /* as decoded */
    size_t       len;
} test_id_t;


#define TEST_ID(j, v)  { j, v, sizeof(v) - 1 }


static int
same_id(const test_id_t *a, const test_id_t *b, int any)
{
    if (any) {
        return a->len == b->len && memcmp(a->value, b->value, a->len) == 0;
    }

    return strcasecmp(a->value, b->value) == 0;
}


static void
test_duplicate_random(void **state)
{
    int                  any;
    char                *p, expect[DIFY_BODY_MESSAGE_LEN];
    size_t               i, j, n, round, later, first;
    uint64_t             seed;
    dify_body_rc_e       rc;
    const test_id_t     *ids[100];
    dify_body_result_t   res;
    char                 body[100 * 48 + 64];

    static const test_id_t  uuids[] = {
        TEST_ID(U1, U1),
        TEST_ID(U1_UPPER, U1_UPPER),
        TEST_ID("3f2504e0-4f89-11d3-9a0c-0305E82C3301",
                "3f2504e0-4f89-11d3-9a0c-0305E82C3301"),
        TEST_ID(U2, U2),
        TEST_ID(U3, U3),
        TEST_ID("00000000-0000-0000-0000-000000000000",
                "00000000-0000-0000-0000-000000000000"),
        TEST_ID("00000000-0000-0000-0000-000000000001",
                "00000000-0000-0000-0000-000000000001"),
        TEST_ID("FFFFFFFF-ffff-ffff-ffff-ffffffffffff",
                "FFFFFFFF-ffff-ffff-ffff-ffffffffffff")
    };

    static const test_id_t  others[] = {
        TEST_ID("", ""),
        TEST_ID("a", "a"),
        TEST_ID("A", "A"),
        TEST_ID("ab", "ab"),
        TEST_ID("\\u0061b", "ab"),
        TEST_ID("a\\u0000", "a\0"),
        TEST_ID("a\\u0000b", "a\0b"),
        TEST_ID("ba", "ba"),
        TEST_ID(U1, U1),
        TEST_ID(U1_UPPER, U1_UPPER)
    };

    (void) state;

    /*
     * Against the obvious quadratic search, on both sides of
     * DIFY_BODY_STACK_IDS (sorted on the stack, or in malloc()ed memory).
     */

    seed = 0x9e3779b97f4a7c15ULL;

    for (round = 0; round < 4000; round++) {

        any = round & 1;
        n = next_random(&seed) % 100;

        p = body;
        p += sprintf(p, "{\"document_ids\": [");

        for (i = 0; i < n; i++) {
            if (any) {
                /* now and then, many values and few repetitions */
                j = next_random(&seed) % ((round & 2) ? 10 : 3);
                ids[i] = &others[j];

            } else {
                j = next_random(&seed) % ((round & 2) ? 8 : 3);
                ids[i] = &uuids[j];
            }

            p += sprintf(p, "%s\"%s\"", i ? "," : "", ids[i]->json);
        }

        p += sprintf(p, "]}");

        later = n;
        first = 0;

        for (j = 1; j < n && later == n; j++) {
            for (i = 0; i < j; i++) {
                if (same_id(ids[i], ids[j], any)) {
                    later = j;
                    first = i;
                    break;
                }
            }
        }

        rc = validate(body, p - body, any ? &conf_any_nocap : &conf_nocap,
                      &res);

        if (later == n) {
            if (rc != DIFY_BODY_OK) {
                fail_msg("%s: rc %d, \"%s\"", body, rc, res.message);
            }

            assert_int_equal(res.documents, n);

        } else {
            sprintf(expect, "document_ids[%zu] duplicates document_ids[%zu].",
                    later, first);

            if (rc != DIFY_BODY_INVALID_PARAM
                || strcmp(res.message, expect) != 0)
            {
                fail_msg("%s: rc %d, \"%s\", expected \"%s\"", body, rc,
                         res.message, expect);
            }
        }
    }
}


/* n distinct UUIDs, in upper case when upper; then "tail" */

static char *
many_ids(size_t n, int upper, const char *tail, size_t *len)
{
    char    *body, *p;
    size_t   i;

    body = malloc(n * 40 + strlen(tail) + 64);
    assert_non_null(body);

    p = body;
    p += sprintf(p, "{\"document_ids\":[");

    for (i = 0; i < n; i++) {
        p += sprintf(p, upper ? "%s\"%08zX-0000-4000-8000-%012zX\""
                              : "%s\"%08zx-0000-4000-8000-%012zx\"",
                     i ? "," : "", i, i);
    }

    p += sprintf(p, "%s]}", tail);

    *len = p - body;

    return body;
}


static void
test_large(void **state)
{
    char                *body;
    size_t               len;
    clock_t              start;
    dify_body_result_t   res;

    (void) state;

    /* cap 0: no limit on the number of ids */

    start = clock();

    body = many_ids(100000, 0, "", &len);
    assert_int_equal(validate(body, len, &conf_nocap, &res), DIFY_BODY_OK);
    assert_int_equal(res.documents, 100000);
    free(body);

    /* a repetition at the very end, in the other case */

    body = many_ids(100000, 0,
                    ",\"0000D431-0000-4000-8000-00000000D431\"", &len);
    assert_int_equal(validate(body, len, &conf_nocap, &res),
                     DIFY_BODY_INVALID_PARAM);
    assert_string_equal(res.message,
                        "document_ids[100000] duplicates document_ids[54321].");
    free(body);

    /* ... which the default cap refuses first */

    body = many_ids(101, 1, "", &len);
    assert_int_equal(validate(body, len, &conf_uuid, &res),
                     DIFY_BODY_INVALID_PARAM);
    assert_string_equal(res.message,
                        "document_ids must not contain more than 100 items.");
    free(body);

    body = many_ids(100, 1, "", &len);
    assert_int_equal(validate(body, len, &conf_uuid, &res), DIFY_BODY_OK);
    assert_int_equal(res.documents, 100);
    free(body);

    /* the same, compared exactly */

    body = many_ids(100000, 1, ",\"x\",\"x\"", &len);
    assert_int_equal(validate(body, len, &conf_any_nocap, &res),
                     DIFY_BODY_INVALID_PARAM);
    assert_string_equal(res.message, "document_ids[100001] duplicates "
                        "document_ids[100000].");
    free(body);

    /* n log n: a second or so even with the sanitizers */
    assert_true(clock() - start < 10 * CLOCKS_PER_SEC);
}


/*
 * Parity with orjson, Dify's parser: t/fixtures/json/orjson-3.8.3.txt,
 * written by t/fixtures/json/make-corpus, holds orjson's verdict on each
 * body of a corpus.  Whatever orjson refuses, the gateway refuses as
 * bad_request (or, where the value budget applies, with its 413); whatever
 * orjson accepts, the gateway reads as JSON too (rc OK or INVALID_PARAM),
 * but for the cases below, where it is stricter on purpose.  Looser than
 * orjson is never right: Dify would then answer 400 itself, after its
 * auth and dataset queries, and the key would have been charged.
 */

#define TEST_FIXTURES  "t/fixtures/json"
#define TEST_CORPUS    "orjson-3.8.3.txt"


typedef struct {
    const char      *prefix;            /* of the case's name */
    dify_body_rc_e   rc;                /* the gateway's answer */
    size_t           used;
} test_stricter_t;


static test_stricter_t  stricter[] = {

    /*
     * Duplicate keys, at any depth (contract, row 6): orjson keeps the
     * last, so a validator reading the first one could be bypassed.
     */
    { "dup-", DIFY_BODY_BAD_REQUEST, 0 },

    /* not an object (row 6): Dify's handler fails on it with a 500 */
    { "root-", DIFY_BODY_BAD_REQUEST, 0 },

    /*
     * Nesting deeper than DIFY_BODY_MAX_DEPTH (64): a batch body has 2
     * levels; orjson 3.8.3 has no limit (it crashes near 100,000),
     * orjson >= 3.9 refuses past 1024, Python code in Dify fails near
     * 1000 and jansson past 2048.
     */
    { "deep-", DIFY_BODY_BAD_REQUEST, 0 },

    /*
     * \u0000 in an object key: jansson cannot store such a key; to Dify
     * it is a key like any other, never "document_ids".
     */
    { "keynul-", DIFY_BODY_BAD_REQUEST, 0 },

    /*
     * More JSON values than the budget (the default max_documents 1000,
     * plus 2, plus DIFY_BODY_EXTRA_VALUES): 413 before parsing, so that
     * no body makes the worker build a large tree.  None without a cap.
     */
    { "values-", DIFY_BODY_TOO_MANY_VALUES, 0 }
};


static size_t
test_hex(const char *hex, unsigned char *out)
{
    size_t  i, n;
    int     c, v;

    n = strlen(hex);
    assert_int_equal(n % 2, 0);

    for (i = 0; i < n; i++) {
        c = hex[i];
        v = (c >= '0' && c <= '9') ? c - '0'
            : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
        assert_true(v >= 0);

        if (i % 2 == 0) {
            out[i / 2] = v << 4;

        } else {
            out[i / 2] |= v;
        }
    }

    return n / 2;
}


static unsigned char *
test_read_file(const char *path, size_t *len)
{
    long            size;
    FILE           *f;
    unsigned char  *data;

    f = fopen(path, "rb");
    if (f == NULL) {
        fail_msg("cannot open \"%s\"", path);
    }

    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    size = ftell(f);
    assert_true(size >= 0);
    assert_int_equal(fseek(f, 0, SEEK_SET), 0);

    data = malloc(size ? size : 1);
    assert_non_null(data);
    assert_int_equal(fread(data, 1, size, f), (size_t) size);
    fclose(f);

    *len = size;

    return data;
}


/* what the gateway should answer to one case under conf, NULL if right */

static const char *
test_parity_case(int accept, const char *name, const unsigned char *body,
    size_t len, const dify_body_conf_t *conf, dify_body_rc_e *got)
{
    size_t               i;
    dify_body_rc_e       rc;
    test_stricter_t     *s;
    dify_body_result_t   res;

    rc = validate((const char *) body, len, conf, &res);
    *got = rc;

    s = NULL;

    for (i = 0; i < sizeof(stricter) / sizeof(stricter[0]); i++) {
        if (strncmp(name, stricter[i].prefix, strlen(stricter[i].prefix))
            == 0)
        {
            s = &stricter[i];
        }
    }

    if (!accept) {
        if (rc == DIFY_BODY_BAD_REQUEST
            || (rc == DIFY_BODY_TOO_MANY_VALUES && conf->max_documents))
        {
            return NULL;
        }

        return "LOOSER than orjson: orjson refuses it";
    }

    if (s != NULL
        && (s->rc != DIFY_BODY_TOO_MANY_VALUES || conf->max_documents))
    {
        if (rc != s->rc) {
            return "not refused as documented";
        }

        s->used++;
        return NULL;
    }

    if (rc == DIFY_BODY_OK || rc == DIFY_BODY_INVALID_PARAM) {
        return NULL;
    }

    return "stricter than orjson, and not documented as such";
}


static void
test_orjson(void **state)
{
    int                  accept;
    char                *line, *name, *field, *tab, *dir, path[1024];
    FILE                *f;
    size_t               i, n, len, cap, bad, cases, accepted;
    ssize_t              got;
    const char          *why;
    unsigned char       *body;
    dify_body_rc_e       rc;
    dify_body_conf_t     conf[2];

    (void) state;

    /* the defaults of the directives; no cap at all */

    conf[0].max_documents = 1000;
    conf[0].ids_any = 0;
    conf[0].reject_duplicates = 0;

    conf[1].max_documents = 0;
    conf[1].ids_any = 1;
    conf[1].reject_duplicates = 0;

    dir = getenv("DIFY_TEST_FIXTURES");
    if (dir == NULL) {
        dir = TEST_FIXTURES;
    }

    snprintf(path, sizeof(path), "%s/%s", dir, TEST_CORPUS);

    f = fopen(path, "r");
    if (f == NULL) {
        fail_msg("cannot open \"%s\" (run from the top of the tree, or set "
                 "DIFY_TEST_FIXTURES)", path);
    }

    line = NULL;
    cap = 0;
    accept = 0;
    cases = 0;
    accepted = 0;
    bad = 0;

    while ((got = getline(&line, &cap, f)) != -1) {

        if (got > 0 && line[got - 1] == '\n') {
            line[got - 1] = '\0';
        }

        if (line[0] == '#' || line[0] == '\0') {
            continue;
        }

        /* VERDICT \t NAME \t BODY [\t # comment] */

        tab = strchr(line, '\t');
        assert_non_null(tab);
        *tab = '\0';
        name = tab + 1;

        if (strcmp(line, "accept") == 0) {
            accept = 1;

        } else if (strcmp(line, "refuse") == 0) {
            accept = 0;

        } else {
            fail_msg("bad verdict \"%s\" in %s", line, path);
        }

        tab = strchr(name, '\t');
        assert_non_null(tab);
        *tab = '\0';
        field = tab + 1;

        tab = strchr(field, '\t');
        if (tab != NULL) {
            *tab = '\0';
        }

        if (field[0] == '@') {
            snprintf(path, sizeof(path), "%s/%s", dir, field + 1);
            body = test_read_file(path, &len);

        } else if (strcmp(field, "-") == 0) {
            body = malloc(1);
            assert_non_null(body);
            len = 0;

        } else {
            body = malloc(strlen(field) / 2 + 1);
            assert_non_null(body);
            len = test_hex(field, body);
        }

        cases++;
        accepted += accept;

        for (i = 0; i < 2; i++) {
            why = test_parity_case(accept, name, body, len, &conf[i], &rc);

            if (why != NULL) {
                print_message("%s (%s, max_documents %zu): rc %d: %s\n",
                              name, accept ? "accepted" : "refused",
                              conf[i].max_documents, rc, why);
                bad++;
            }
        }

        free(body);
    }

    free(line);
    fclose(f);

    print_message("%zu cases, %zu accepted by orjson\n", cases, accepted);

    /* the whole corpus was read; each documented case is in it */

    assert_true(cases >= 400);
    assert_true(accepted >= 100 && cases - accepted >= 100);

    for (n = 0; n < sizeof(stricter) / sizeof(stricter[0]); n++) {
        if (stricter[n].used == 0) {
            print_message("no case refused as documented for \"%s\"\n",
                          stricter[n].prefix);
            bad++;
        }
    }

    assert_int_equal(bad, 0);
}


/* jansson's allocator, failing once "budget" allocations are spent */

static size_t  alloc_budget;


static void *
failing_malloc(size_t size)
{
    if (alloc_budget == 0) {
        return NULL;
    }

    alloc_budget--;

    return malloc(size);
}


static void
test_nomem(void **state)
{
    size_t               i, n, nomem;
    dify_body_rc_e       rc;
    dify_body_result_t   res;

    static const char    body[] = "{\"a\": {\"b\": [1, \"x\", null]}, "
                                  "\"document_ids\": [\"" U1 "\", \"" U2 "\"]}";

    (void) state;

    /*
     * Every allocation of the parser fails in turn.  jansson tells an
     * allocation failure from a syntax error only now and then (its
     * lexer drops what it cannot store), so a failure may read as any
     * rejection; but it never passes, never crashes and never leaks
     * (LeakSanitizer looks at exit).
     */

    json_set_alloc_funcs(failing_malloc, free);
    both_ways = 0;

    nomem = 0;

    for (n = 0; n < 1000; n++) {
        alloc_budget = n;

        rc = validate(body, sizeof(body) - 1, &conf_uuid, &res);

        if (rc == DIFY_BODY_OK) {
            break;
        }

        if (rc == DIFY_BODY_NOMEM) {
            assert_string_equal(res.message, "out of memory");
            nomem++;
        }
    }

    json_set_alloc_funcs(malloc, free);
    both_ways = 1;

    assert_int_equal(rc, DIFY_BODY_OK);
    assert_int_equal(res.documents, 2);
    assert_true(nomem > 0);
    print_message("%zu allocations, %zu failures told as such\n", n, nomem);

    /* enough memory: it passes every time */

    for (i = 0; i < 3; i++) {
        assert_int_equal(validate(body, sizeof(body) - 1, &conf_uuid, &res),
                         DIFY_BODY_OK);
    }
}


static void
test_result_reset(void **state)
{
    dify_body_result_t  res;

    (void) state;

    assert_int_equal(validate("{\"document_ids\":[\"" U1 "\"]}",
                              sizeof("{\"document_ids\":[\"" U1 "\"]}") - 1,
                              &conf_uuid, &res),
                     DIFY_BODY_OK);
    assert_int_equal(res.documents, 1);
    assert_string_equal(res.message, "");

    /* validate() filled res with 'X' first: both fields are set anew */
    assert_int_equal(validate("{}", 2, &conf_uuid, &res),
                     DIFY_BODY_INVALID_PARAM);
    assert_int_equal(res.documents, 0);
}


/*
 * The common form's one-pass reading: which bodies it decides, which it
 * leaves to the scan and jansson; validate() checks each against them.
 */

typedef struct {
    const char  *body;
    int          fast;              /* 1: decided in the one pass */
    int          rc;
} fast_case_t;


static void
test_fast(void **state)
{
    size_t               i;
    dify_body_rc_e       rc;
    dify_body_result_t   res;

    static const fast_case_t  cases[] = {
        { "{\"document_ids\":[\"" U1 "\"]}", 1, DIFY_BODY_OK },
        { " \t\r\n{ \"document_ids\" : [ \"" U1 "\" , \"" U2 "\" ] } \n",
          1, DIFY_BODY_OK },
        { "{\"document_ids\":[]}", 1, DIFY_BODY_OK },
        { "{\"document_ids\":[ ]}", 1, DIFY_BODY_OK },
        { "{\"document_ids\":[\"x\"]}", 1, DIFY_BODY_INVALID_PARAM },
        { "{\"document_ids\":[\"" U1 "\",\"" U1_UPPER "\"]}",
          1, DIFY_BODY_INVALID_PARAM },
        { "{\"document_ids\":[\"" U1 "\",\"x\",\"" U1 "\"]}",
          1, DIFY_BODY_INVALID_PARAM },
        { "{\"document_ids\":[\"\"]}", 1, DIFY_BODY_INVALID_PARAM },
        /* left to jansson: every other form, same answers */
        { "{\"document_ids\":[\"" U1 "\",]}", 0, DIFY_BODY_BAD_REQUEST },
        { "{\"document_ids\":[,\"" U1 "\"]}", 0, DIFY_BODY_BAD_REQUEST },
        { "{\"document_ids\":[\"" U1 "\"]", 0, DIFY_BODY_BAD_REQUEST },
        { "{\"document_ids\":[\"" U1 "\"]}x", 0, DIFY_BODY_BAD_REQUEST },
        { "{\"document_ids\":[\"" U1 "\"]}{}", 0, DIFY_BODY_BAD_REQUEST },
        { "{\"document_ids\":[\"" U1 "\"]}\f", 0, DIFY_BODY_BAD_REQUEST },
        { "{\"document_ids\":[\"" U1 "\"]\v}", 0, DIFY_BODY_BAD_REQUEST },
        { "{\"document_ids\":[\"" U1 "]}", 0, DIFY_BODY_BAD_REQUEST },
        { "{\"document_ids\":[\"a\tb\"]}", 0, DIFY_BODY_BAD_REQUEST },
        { "{\"document_ids\":[\"a\x7f\"]}", 0, DIFY_BODY_INVALID_PARAM },
        { "{\"document_ids\":[\"\\u0033f2504e0-4f89-11d3-9a0c-0305e82c3301\"]}",
          0, DIFY_BODY_OK },
        { "{\"document\\u005fids\":[\"" U1 "\"]}", 0, DIFY_BODY_OK },
        { "{\"document_ids\":[\"" U1 "\"],\"document_ids\":[]}",
          0, DIFY_BODY_BAD_REQUEST },
        { "{\"document_ids\":[\"" U1 "\"],\"x\":1}", 0, DIFY_BODY_OK },
        { "{\"x\":1,\"document_ids\":[\"" U1 "\"]}", 0, DIFY_BODY_OK },
        { "{\"document_ids\":[\"" U1 "\",1]}", 0, DIFY_BODY_INVALID_PARAM },
        { "{\"document_ids\":[\"" U1 "\",[]]}", 0, DIFY_BODY_INVALID_PARAM },
        { "{\"document_ids\":\"" U1 "\"}", 0, DIFY_BODY_INVALID_PARAM },
        { "{\"document_ids\":null}", 0, DIFY_BODY_INVALID_PARAM },
        { "{\"Document_ids\":[\"" U1 "\"]}", 0, DIFY_BODY_INVALID_PARAM },
        { "{\"document_ids \":[\"" U1 "\"]}", 0, DIFY_BODY_INVALID_PARAM },
        { "[\"" U1 "\"]", 0, DIFY_BODY_BAD_REQUEST },
        { "{}", 0, DIFY_BODY_INVALID_PARAM },
        { "{", 0, DIFY_BODY_BAD_REQUEST },
        { "{\"document_ids\"", 0, DIFY_BODY_BAD_REQUEST },
        { "{\"document_ids\":", 0, DIFY_BODY_BAD_REQUEST },
        { "{\"document_ids\":[", 0, DIFY_BODY_BAD_REQUEST },
        { "{\"document_ids\":[\"", 0, DIFY_BODY_BAD_REQUEST },
        { "{\"document_ids\":[\"" U1 "\"", 0, DIFY_BODY_BAD_REQUEST },
        { "{\"document_ids\":[\"" U1 "\" ", 0, DIFY_BODY_BAD_REQUEST },
        { "{\"document_ids\":[\"\xc3\xa9\"]}", 0, DIFY_BODY_INVALID_PARAM },
        { "{\"document_ids\":[\"\xc3\"]}", 0, DIFY_BODY_BAD_REQUEST },
    };

    (void) state;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rc = validate(cases[i].body, strlen(cases[i].body), &conf_uuid, &res);

        if ((int) rc != cases[i].rc || res.fast != (unsigned) cases[i].fast) {
            print_error("case %zu: %s: rc %d, fast %u\n", i, cases[i].body,
                        (int) rc, res.fast);
        }

        assert_int_equal(rc, cases[i].rc);
        assert_int_equal(res.fast, cases[i].fast);

        (void) validate(cases[i].body, strlen(cases[i].body), &conf_any,
                        &res);
        (void) validate(cases[i].body, strlen(cases[i].body), &conf_dups,
                        &res);
        (void) validate(cases[i].body, strlen(cases[i].body),
                        &conf_any_nocap, &res);
    }
}


/* n ids, U1-like with i in the last 8 digits; dup: the last repeats 0 */

static char *
fast_body(size_t n, int dup, size_t *len)
{
    char    *b, *p;
    size_t   i;

    b = malloc(32 + n * 40);
    assert_non_null(b);

    p = b + sprintf(b, "{\"document_ids\": [");

    for (i = 0; i < n; i++) {
        p += sprintf(p, "%s\"3f2504e0-4f89-11d3-9a0c-0305%08zx\"",
                     i ? ", " : "", (dup && i == n - 1) ? (size_t) 0 : i);
    }

    p += sprintf(p, "]}");
    *len = p - b;

    return b;
}


static void
test_fast_counts(void **state)
{
    char                *b;
    size_t               n, len;
    dify_body_conf_t     conf;
    dify_body_result_t   res;

    static const size_t  ns[] = { 1, 31, 32, 33, 99, 100, 101, 163, 164,
                                  165, 166, 167, 1000 };

    (void) state;

    /*
     * Around the stack's 32 ids, max_documents (100), and the value
     * budget (100 + 66 values: 164 ids and the root and the array): past
     * it the scan answers 413, as before.
     */

    conf = conf_uuid;

    for (n = 0; n < sizeof(ns) / sizeof(ns[0]); n++) {
        b = fast_body(ns[n], 0, &len);
        conf.reject_duplicates = 1;
        (void) validate(b, len, &conf, &res);
        assert_int_equal(res.fast, ns[n] + 2 <= 100 + 66);
        conf.reject_duplicates = 0;
        (void) validate(b, len, &conf, &res);
        free(b);

        b = fast_body(ns[n], 1, &len);
        conf.reject_duplicates = 1;
        (void) validate(b, len, &conf, &res);
        conf.reject_duplicates = 0;
        (void) validate(b, len, &conf, &res);
        free(b);
    }

    b = fast_body(100, 1, &len);
    conf.reject_duplicates = 1;
    assert_int_equal(validate(b, len, &conf, &res), DIFY_BODY_INVALID_PARAM);
    assert_true(res.fast);
    assert_string_equal(res.message,
                        "document_ids[99] duplicates document_ids[0].");
    free(b);

    b = fast_body(101, 0, &len);
    assert_int_equal(validate(b, len, &conf, &res), DIFY_BODY_INVALID_PARAM);
    assert_true(res.fast);
    free(b);

    b = fast_body(1000, 0, &len);
    assert_int_equal(validate(b, len, &conf, &res),
                     DIFY_BODY_TOO_MANY_VALUES);
    assert_false(res.fast);
    conf.max_documents = 0;
    assert_int_equal(validate(b, len, &conf, &res), DIFY_BODY_OK);
    assert_true(res.fast);
    assert_int_equal(res.documents, 1000);
    free(b);
}


/*
 * Every single-byte change of common bodies, in every configuration:
 * the one pass and jansson agree on all (validate() checks).
 */

static void
test_fast_mutations(void **state)
{
    char                *b;
    size_t               i, k, c, n, len, fast;
    dify_body_result_t   res;

    static const unsigned char  bytes[] = {
        ' ', '\t', '\n', '\r', '\f', '"', '\\', ',', ':', '[', ']', '{',
        '}', '0', 'a', 'A', 'g', '-', 0x7f, 0x80, 0xc3, 0xff, '\0', 'u'
    };

    const dify_body_conf_t  *confs[] = {
        &conf_uuid, &conf_any, &conf_dups, &conf_any_dups, &conf_nocap
    };

    (void) state;

    fast = 0;

    for (n = 0; n <= 3; n++) {
        b = fast_body(n, n == 3, &len);

        for (i = 0; i < len; i++) {
            for (c = 0; c < sizeof(bytes); c++) {
                char  saved = b[i];

                b[i] = (char) bytes[c];

                for (k = 0; k < sizeof(confs) / sizeof(confs[0]); k++) {
                    (void) validate(b, len, confs[k], &res);
                    fast += res.fast;
                }

                b[i] = saved;
            }
        }

        free(b);
    }

    print_message("%zu mutated bodies decided in the one pass\n", fast);
    assert_true(fast > 1000);
}


/*
 * Tester's cases (t11): ids of every printable byte in "any" mode past
 * the stack's 32 (the heap path), ids equal but for case or length,
 * duplicates at either end, separators JSON does not know, and every
 * prefix of a common body (validate() copies exactly len bytes: ASan
 * sees a read past the end).
 */

static void
test_fast_break(void **state)
{
    char                *c, *p;
    size_t               i, k, len;
    dify_body_rc_e       rc;
    dify_body_result_t   res;

    static char          b[4096];

    static const char  *seps[] = {
        "\f", "\v", "\xc2\xa0", "\xef\xbb\xbf", "/**/", "\x1c", "\xc2\x85"
    };

    (void) state;

    /* 92 ids "!".."~" without '"' and '\\', each once: no duplicate */

    p = b + sprintf(b, "{\"document_ids\":[");

    for (i = 0x21; i < 0x7f; i++) {
        if (i == '"' || i == '\\') {
            continue;
        }

        p += sprintf(p, "%s\"%c\"", p[-1] == '[' ? "" : ",", (int) i);
    }

    p += sprintf(p, "]}");
    len = p - b;

    rc = validate(b, len, &conf_any_nocap, &res);
    assert_int_equal(rc, DIFY_BODY_OK);
    assert_true(res.fast);
    assert_int_equal(res.documents, 92);

    /* the first id once more, at the end: a duplicate of index 0 */

    sprintf(b + len - 2, ",\"!\"]}");
    rc = validate(b, len + 4, &conf_any_nocap, &res);
    assert_int_equal(rc, DIFY_BODY_INVALID_PARAM);
    assert_true(res.fast);
    assert_string_equal(res.message,
                        "document_ids[92] duplicates document_ids[0].");

    /* the last id once more, first: index 92 duplicates index 0 */

    c = strdup(strchr(b, '[') + 1);
    assert_non_null(c);
    c[strlen(c) - 6] = '\0';                  /* without ,"!"]} */
    len = sprintf(b, "{\"document_ids\":[\"~\",%s]}", c);
    free(c);
    rc = validate(b, len, &conf_any_nocap, &res);
    assert_int_equal(rc, DIFY_BODY_INVALID_PARAM);
    assert_true(res.fast);
    assert_string_equal(res.message,
                        "document_ids[92] duplicates document_ids[0].");

    /* equal but for case, or a prefix: not duplicates in "any" mode */

    len = sprintf(b, "{\"document_ids\":[\"a\",\"A\",\"ab\",\"a \","
                  "\" a\",\"\",\"" U1 "\",\"" U1_UPPER "\"]}");
    rc = validate(b, len, &conf_any_nocap, &res);
    assert_int_equal(rc, DIFY_BODY_OK);
    assert_true(res.fast);
    assert_int_equal(res.documents, 8);

    /* and UUIDs equal but for case are, past 32 ids too */

    p = b + sprintf(b, "{\"document_ids\":[\"" U1_UPPER "\"");

    for (i = 1; i < 40; i++) {
        p += sprintf(p, ",\"3f2504e0-4f89-11d3-9a0c-0305%08zx\"", i);
    }

    p += sprintf(p, ",\"" U1 "\"]}");
    rc = validate(b, p - b, &conf_nocap, &res);
    assert_int_equal(rc, DIFY_BODY_INVALID_PARAM);
    assert_true(res.fast);
    assert_string_equal(res.message,
                        "document_ids[40] duplicates document_ids[0].");

    /* separators JSON does not know, at every place between tokens */

    for (k = 0; k < sizeof(seps) / sizeof(seps[0]); k++) {
        static const char  *at[] = { "", "{", "{\"document_ids\"",
                                     "{\"document_ids\":",
                                     "{\"document_ids\":[",
                                     "{\"document_ids\":[\"" U1 "\"",
                                     "{\"document_ids\":[\"" U1 "\",",
                                     "{\"document_ids\":[\"" U1 "\",\""
                                     U2 "\"]",
                                     "{\"document_ids\":[\"" U1 "\",\""
                                     U2 "\"]}" };
        const char  *full = "{\"document_ids\":[\"" U1 "\",\"" U2 "\"]}";

        for (i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
            len = sprintf(b, "%s%s%s", at[i], seps[k], full + strlen(at[i]));
            rc = validate(b, len, &conf_uuid, &res);
            assert_int_not_equal(rc, DIFY_BODY_OK);
            assert_false(res.fast);
            (void) validate(b, len, &conf_any_dups, &res);
        }
    }

    /* every prefix of a common body, in every configuration */

    len = sprintf(b, " {\t\"document_ids\" :\r\n[ \"" U1 "\" ,\"" U2 "\","
                  "\"" U1 "\" ] }\n");

    for (i = 0; i < len; i++) {
        rc = validate(b, i, &conf_uuid, &res);

        if (i < len - 1) {
            assert_int_equal(rc, DIFY_BODY_BAD_REQUEST);
        }

        (void) validate(b, i, &conf_any, &res);
        (void) validate(b, i, &conf_dups, &res);
        (void) validate(b, i, &conf_any_dups, &res);
        (void) validate(b, i, &conf_nocap, &res);
    }

}


static void
test_fast_share(void **state)
{
    (void) state;

    /* this file's bodies, the orjson corpus included, both ways */

    print_message("%zu bodies validated both ways, %zu of them decided "
                  "in the common form's one pass\n", validated, fast_decided);
    assert_true(fast_decided > 0);
    assert_true(fast_decided < validated);
}


int
main(void)
{
    const struct CMUnitTest  tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_fast),
        cmocka_unit_test(test_fast_counts),
        cmocka_unit_test(test_fast_mutations),
        cmocka_unit_test(test_fast_break),
        cmocka_unit_test(test_not_json),
        cmocka_unit_test(test_not_object),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_bom),
        cmocka_unit_test(test_nul),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_orjson),
        cmocka_unit_test(test_field),
        cmocka_unit_test(test_cap),
        cmocka_unit_test(test_items),
        cmocka_unit_test(test_duplicate_ids),
        cmocka_unit_test(test_duplicate_ids_any),
        cmocka_unit_test(test_duplicate_random),
        cmocka_unit_test(test_large),
        cmocka_unit_test(test_nomem),
        cmocka_unit_test(test_result_reset),
        cmocka_unit_test(test_fast_share),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
