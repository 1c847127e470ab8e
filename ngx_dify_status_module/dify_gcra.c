/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * The rate limiter's arithmetic (GCRA), its Redis script, the parsing
 * of the script's reply and the RateLimit header fields.
 *
 * All times are integers in microseconds.  With T the interval and
 * tol = burst * T the tolerance, a key's state is its theoretical
 * arrival time (TAT); d = tat - now, capped to [0, tol], is what the
 * key owes.  A request of cost c passes iff d + c * T <= tol.
 *
 * The Lua script and dify_gcra_decide() are the same algorithm written
 * twice, and must stay so step by step: the script runs in Redis for
 * the fleet, dify_gcra_decide() on a local clock for the fallback and
 * the shadow of a key's state.  t/unit/test_gcra_redis.c runs both on
 * the same sequences and compares every field.
 *
 * Lua numbers are doubles, exact for integers up to 2^53 (9.007e15).
 * Every value the script computes is an integer below 2^53, so sums,
 * differences and products are exact, and so is floor(a / b) or
 * ceil(a / b) of two such integers (when a / b is not an integer it is
 * at least 1 / b away from one, more than the rounding error of the
 * division, a / b * 2^-53 < 1 / b).  The bounds:
 *
 *   now        ~ 1.8e15 us (2027), 5.4e15 us in the year 2141;
 *   T          <= period * 1e6 / 1 = 8.64e10 us (1 r/d);
 *   tol        = burst * T <= DIFY_GCRA_MAX_TOL = 3.6e15: the burst is
 *                capped so (at 1 r/d, 41666), as it was by 1e6 * 3.6e9
 *                when the longest period was the hour;
 *   d, retry   <= tol; need = d + c * T <= 2 * tol = 7.2e15, since a
 *                cost c is weighed only when c <= burst;
 *   now + d    <= now + tol < 9.0e15 until 2141 (the TAT written);
 *   units      q = ceil(d / T_old) <= burst after the cap, q * T <= tol;
 *   refund     tat - c * T_state, both terms below 2^53.
 *
 * The C code computes in uint64_t, where none of these overflow.
 */


#include <inttypes.h>
#include <string.h>

#include "dify_gcra.h"


#define DIFY_GCRA_USEC         1000000

#define DIFY_GCRA_DEFAULT      "default"

#define DIFY_GCRA_STR(x)       DIFY_GCRA_STR_(x)
#define DIFY_GCRA_STR_(x)      #x


static dify_reply_rc_e dify_gcra_parse_one(redisReply **el,
    dify_gcra_result_t *res, const char **e);
static dify_reply_rc_e dify_gcra_check(const long long *v,
    dify_gcra_result_t *res, const char **e);
static uint64_t dify_gcra_ceil_sec(uint64_t us);
static size_t dify_gcra_item(char *buf, size_t size, const char *name,
    size_t name_len, char ka, uint64_t a, char kb, uint64_t b);


/*
 * The script.  ARGV values out of range are clamped exactly as
 * dify_gcra_normalize() clamps them; a non-numeric ARGV is an error, and
 * so is any malformed part of a call, before anything is written.
 * An override field that does not parse is ignored (the default
 * applies); the rate field follows dify_gcra_parse_rate()'s grammar.
 * An override rate brings its own burst, its number of units, as the
 * rate= of dify_status_limit does, unless the override sets burst too.
 *
 * One call decides a batch of groups in order, on one TIME: the states
 * of every group are read with one MGET, kept in a table while the
 * groups are decided (a key met twice sees its first charge), and each
 * state that changed is written once at the end.  A group after another
 * of the same key is decided exactly as a second call in the same
 * microsecond would be.  The overrides of the "d" groups are read only
 * when one EXISTS of them all finds one: most keys have none, and a
 * key that has one is a "c" group, read on every call.  Either way every
 * group is decided under its override as it is when the call runs.
 * With numkeys 0 (a Redis Cluster node's batch, keys of several slots),
 * each inner command must name keys of one slot: the states are read
 * with one MGET per override key (one hash tag), and the "d" overrides
 * with one EXISTS each.  Every write comes after every read, so a key
 * the node does not serve fails the call before it writes.
 *
 * A state is "TAT.IIIIIIIIIII": the TAT, a point, and the interval in
 * 11 digits (86400000000 at most), so that a node of the version before
 * r/d, whose script reads the state with tonumber() and floors what it
 * owes, still reads the TAT (the fraction is below 1) during a rolling
 * upgrade.  A state without the point is that version's bare TAT, its
 * interval unknown: taken as the one in force.  A TAT that
 * is not a number, is negative or NaN counts as absent; one beyond
 * now + tol counts as now + tol.  Under another interval than the
 * state's, the key owes ceil(d / T_state) units (at most burst), at T
 * each: what it spent survives a change of rate.  The states are
 * written only when every limit of a group admits the request, each
 * with what it then owes, and expire when their bucket is full again:
 * PXAT, the TAT rounded up to Redis's millisecond (Redis >= 6.2).  Not
 * PX: Redis adds PX to its own clock truncated to the millisecond, so
 * the key could vanish up to 1 ms before the TAT and forgive what it
 * owed.
 *
 * Reply, per limit of a "c" or "d" group: verdict, rate, period, burst,
 * remaining, reset, retry; of an "r" group, one integer.
 *   blocked (-1): remaining, reset and retry are 0, state not read;
 *   never (-2):   cost > burst; remaining and reset from the state,
 *                 retry 0;
 *   limited (0):  retry = d + c * T - tol > 0;
 *   allowed (1):  retry 0.
 * remaining = floor((tol - d') / T), reset = d', where d' is what the
 * key owes after the decision: charged only when all are allowed.
 */

const char  dify_gcra_script[] =
    "local max_rate = " DIFY_GCRA_STR(DIFY_GCRA_MAX_RATE) "\n"
    "local max_burst = " DIFY_GCRA_STR(DIFY_GCRA_MAX_BURST) "\n"
    "local max_period = " DIFY_GCRA_STR(DIFY_GCRA_MAX_PERIOD) "\n"
    "local max_tol = 3600000000000000\n"
    "local periods = {s = 1, m = 60, h = 3600, d = 86400}\n"
    "local widths = {c = 5, d = 5, r = 2}\n"
    "local spat = '^(%d+)%.(%d%d%d%d%d%d%d%d%d%d%d)$'\n"
    "local find, match = string.find, string.match\n"
    "local byte, sub = string.byte, string.sub\n"
    "local floor, ceil, min = math.floor, math.ceil, math.min\n"
    "local function int(s)\n"
    "    if not find(s, '^%d+$') then\n"
    "        return nil\n"
    "    end\n"
    "    return tonumber(s)\n"
    "end\n"
    "local function clamp(v, lo, hi)\n"
    "    if v < lo then return lo end\n"
    "    if v > hi then return hi end\n"
    "    return v\n"
    "end\n"
    "local function bad()\n"
    "    return redis.error_reply('ERR dify_gcra: bad arguments')\n"
    "end\n"
    "local desc = ARGV[1]\n"
    "if type(desc) ~= 'string' or #desc == 0 or #desc % 2 ~= 0 then\n"
    "    return bad()\n"
    "end\n"
    "local ng = #desc / 2\n"
    "local ops, ns, ks, as, dk = {}, {}, {}, {}, {}\n"
    "local nk, na, nd = 1, 2, 0\n"
    "for g = 1, ng do\n"
    "    local op = sub(desc, 2 * g - 1, 2 * g - 1)\n"
    "    local n = byte(desc, 2 * g) - 48\n"
    "    local w = widths[op]\n"
    "    if not w or n < 1 or n > 8 then\n"
    "        return bad()\n"
    "    end\n"
    "    ops[g], ns[g], ks[g], as[g] = op, n, nk, na\n"
    "    if op == 'd' then\n"
    "        nd = nd + 1\n"
    "        dk[nd] = nk\n"
    "    end\n"
    "    nk = nk + 1 + n\n"
    "    na = na + w * n\n"
    "end\n"
    "local K, A, cl = KEYS, ARGV, false\n"
    "if #KEYS == 0 and nk > 1 then\n"
    "    cl = true\n"
    "    if na + nk - 2 ~= #ARGV then\n"
    "        return bad()\n"
    "    end\n"
    "    K, A = {}, {desc}\n"
    "    for i = 1, nk - 1 do\n"
    "        K[i] = ARGV[1 + i]\n"
    "    end\n"
    "    for i = 2, na - 1 do\n"
    "        A[i] = ARGV[nk - 1 + i]\n"
    "    end\n"
    "elseif nk - 1 ~= #KEYS or na - 1 ~= #ARGV then\n"
    "    return bad()\n"
    "end\n"
    "local keys, pos, nkeys = {}, {}, 0\n"
    "local tag, tk, nt = {}, {}, 0\n"
    "for g = 1, ng do\n"
    "    local l\n"
    "    if cl then\n"
    "        local t = tag[K[ks[g]]]\n"
    "        if not t then\n"
    "            nt = nt + 1\n"
    "            t = nt\n"
    "            tag[K[ks[g]]], tk[t] = t, {}\n"
    "        end\n"
    "        l = tk[t]\n"
    "    end\n"
    "    for i = ks[g] + 1, ks[g] + ns[g] do\n"
    "        local k = K[i]\n"
    "        if not pos[k] then\n"
    "            nkeys = nkeys + 1\n"
    "            keys[nkeys] = k\n"
    "            pos[k] = nkeys\n"
    "            if l then\n"
    "                l[#l + 1] = nkeys\n"
    "            end\n"
    "        end\n"
    "    end\n"
    "end\n"
    "for i = 1, nd do\n"
    "    dk[i] = K[dk[i]]\n"
    "end\n"
    "local over, ov, raw = false, {}, {}\n"
    "if cl then\n"
    "    for i = 1, nd do\n"
    "        local k = dk[i]\n"
    "        if ov[k] == nil then\n"
    "            ov[k] = redis.call('EXISTS', k) > 0\n"
    "        end\n"
    "    end\n"
    "    for t = 1, nt do\n"
    "        local l, m = tk[t], {}\n"
    "        for i = 1, #l do\n"
    "            m[i] = keys[l[i]]\n"
    "        end\n"
    "        if #l > 0 then\n"
    "            m = redis.call('MGET', unpack(m))\n"
    "        end\n"
    "        for i = 1, #l do\n"
    "            raw[l[i]] = m[i]\n"
    "        end\n"
    "    end\n"
    "else\n"
    "    over = nd > 0 and redis.call('EXISTS', unpack(dk)) > 0\n"
    "    raw = redis.call('MGET', unpack(keys))\n"
    "end\n"
    "local tats, its, dirty = {}, {}, {}\n"
    "for j = 1, nkeys do\n"
    "    local s = raw[j]\n"
    "    if s then\n"
    "        local a, b = match(s, spat)\n"
    "        if a then\n"
    "            b = tonumber(b)\n"
    "            if b < 1 then b = nil end\n"
    "            tats[j], its[j] = tonumber(a), b\n"
    "        else\n"
    "            tats[j] = tonumber(s)\n"
    "        end\n"
    "    end\n"
    "end\n"
    "local now = redis.call('TIME')\n"
    "now = tonumber(now[1]) * 1000000 + tonumber(now[2])\n"
    "local R, P, B, C, T, D, V, Y, J = {}, {}, {}, {}, {}, {}, {}, {}, {}\n"
    "local out, no = {}, 0\n"
    "for g = 1, ng do\n"
    "    local op, n, a, s = ops[g], ns[g], as[g], ks[g] + 1\n"
    "    if op == 'r' then\n"
    "        local done = 0\n"
    "        for i = 0, n - 1 do\n"
    "            local c, t = int(A[a + 2 * i]), int(A[a + 2 * i + 1])\n"
    "            local j = pos[K[s + i]]\n"
    "            local tat, ts = tats[j], its[j]\n"
    "            if c and t and t >= 1 and tat and tat > now\n"
    "               and tat < 2^53\n"
    "            then\n"
    "                t = ts or t\n"
    "                tats[j], its[j] = tat - min(c, max_burst) * t, t\n"
    "                dirty[j] = true\n"
    "                done = done + 1\n"
    "            end\n"
    "        end\n"
    "        no = no + 1\n"
    "        out[no] = done\n"
    "    else\n"
    "        for i = 1, n do\n"
    "            local b = a + 5 * i - 5\n"
    "            local rate, period = int(A[b + 1]), int(A[b + 2])\n"
    "            local burst, cost = int(A[b + 3]), int(A[b + 4])\n"
    "            if not (rate and period and burst and cost)\n"
    "               or not find(A[b], '^[%w_%-]+$')\n"
    "            then\n"
    "                return bad()\n"
    "            end\n"
    "            R[i] = clamp(rate, 1, max_rate)\n"
    "            P[i] = clamp(period, 1, max_period)\n"
    "            B[i] = clamp(burst, 1, max_burst)\n"
    "            C[i] = cost\n"
    "        end\n"
    "        local blocked = false\n"
    "        if op == 'c' or over or ov[K[s - 1]] then\n"
    "            local fields = {'blocked'}\n"
    "            for i = 1, n do\n"
    "                local name = A[a + 5 * i - 5]\n"
    "                if name == 'default' then\n"
    "                    fields[2 * i], fields[2 * i + 1] = 'rate', 'burst'\n"
    "                else\n"
    "                    fields[2 * i] = name .. '.rate'\n"
    "                    fields[2 * i + 1] = name .. '.burst'\n"
    "                end\n"
    "            end\n"
    "            local o = redis.call('HMGET', K[s - 1], unpack(fields))\n"
    "            blocked = o[1] == '1'\n"
    "            for i = 1, n do\n"
    "                if o[2 * i] then\n"
    "                    local m, u = match(o[2 * i], '^(%d+) *r?/([smhd])$')\n"
    "                    if m then\n"
    "                        m = tonumber(m)\n"
    "                        if m >= 1 and m <= max_rate then\n"
    "                            R[i], P[i], B[i] = m, periods[u], m\n"
    "                        end\n"
    "                    end\n"
    "                end\n"
    "                local b = o[2 * i + 1] and int(o[2 * i + 1])\n"
    "                if b and b >= 1 and b <= max_burst then\n"
    "                    B[i] = b\n"
    "                end\n"
    "            end\n"
    "        end\n"
    "        local all = true\n"
    "        for i = 1, n do\n"
    "            local cost = C[i]\n"
    "            local t = floor(P[i] * 1000000 / R[i])\n"
    "            if t < 1 then t = 1 end\n"
    "            local burst = min(B[i], floor(max_tol / t))\n"
    "            local tol = burst * t\n"
    "            local d, v, retry = 0, -1, 0\n"
    "            local j = pos[K[s + i - 1]]\n"
    "            if not blocked then\n"
    "                local tat, ts = tats[j], its[j]\n"
    "                if tat and tat > now then\n"
    "                    if ts and ts ~= t then\n"
    "                        d = min(ceil((tat - now) / ts), burst) * t\n"
    "                    else\n"
    "                        d = floor(min(tat - now, tol))\n"
    "                    end\n"
    "                end\n"
    "                v = 1\n"
    "                if cost > burst then\n"
    "                    v = -2\n"
    "                    all = false\n"
    "                elseif d + cost * t > tol then\n"
    "                    v = 0\n"
    "                    retry = d + cost * t - tol\n"
    "                    all = false\n"
    "                end\n"
    "            end\n"
    "            B[i], T[i], D[i] = burst, t, d\n"
    "            V[i], Y[i], J[i] = v, retry, j\n"
    "        end\n"
    "        for i = 1, n do\n"
    "            local t, d, tol = T[i], D[i], B[i] * T[i]\n"
    "            out[no + 1] = V[i]\n"
    "            out[no + 2] = R[i]\n"
    "            out[no + 3] = P[i]\n"
    "            out[no + 4] = B[i]\n"
    "            if blocked then\n"
    "                out[no + 5] = 0\n"
    "                out[no + 6] = 0\n"
    "            else\n"
    "                if all then\n"
    "                    d = d + C[i] * t\n"
    "                    tats[J[i]], its[J[i]] = now + d, t\n"
    "                    dirty[J[i]] = true\n"
    "                end\n"
    "                out[no + 5] = floor((tol - d) / t)\n"
    "                out[no + 6] = d\n"
    "            end\n"
    "            out[no + 7] = Y[i]\n"
    "            no = no + 7\n"
    "        end\n"
    "    end\n"
    "end\n"
    "for j = 1, nkeys do\n"
    "    if dirty[j] then\n"
    "        local tat = tats[j]\n"
    "        if tat > now then\n"
    "            redis.call('SET', keys[j],\n"
    "                       string.format('%d.%011d', tat, its[j]),\n"
    "                       'PXAT', ceil(tat / 1000))\n"
    "        else\n"
    "            redis.call('DEL', keys[j])\n"
    "        end\n"
    "    end\n"
    "end\n"
    "return out\n";


uint64_t
dify_gcra_interval(const dify_gcra_limit_t *limit)
{
    uint64_t           t;
    dify_gcra_limit_t  lim;

    /* the burst does not weigh in the interval */

    dify_gcra_normalize(limit, &lim);

    t = lim.period * DIFY_GCRA_USEC / lim.rate;

    return t ? t : 1;
}


uint64_t
dify_gcra_owed(const dify_gcra_state_t *st, int64_t now,
    const dify_gcra_limit_t *limit)
{
    uint64_t           t, tol, d, q;
    dify_gcra_limit_t  lim;

    dify_gcra_normalize(limit, &lim);

    t = dify_gcra_interval(&lim);
    tol = lim.burst * t;

    if (st->tat <= now) {
        return 0;
    }

    /* the difference of two int64_t, computed without overflow */

    d = (uint64_t) st->tat - (uint64_t) now;

    if (st->interval != 0 && st->interval != t) {
        /* in units, the unit being refilled counted whole */

        q = d / st->interval + (d % st->interval != 0);

        return (q < lim.burst ? q : lim.burst) * t;
    }

    return d < tol ? d : tol;
}


void
dify_gcra_decide(int64_t *tat, int64_t now, const dify_gcra_limit_t *limit,
    uint64_t cost, dify_gcra_result_t *res)
{
    dify_gcra_state_t  st;

    st.tat = *tat;
    st.interval = 0;

    if (dify_gcra_decide_all(&st, now, limit, &cost, 1, 0, res)) {
        *tat = st.tat;
    }
}


int
dify_gcra_decide_all(dify_gcra_state_t *st, int64_t now,
    const dify_gcra_limit_t *limits, const uint64_t *costs, size_t n,
    int blocked, dify_gcra_result_t *res)
{
    int       all;
    size_t    i;
    uint64_t  t, tol, d;

    all = 1;

    for (i = 0; i < n; i++) {
        dify_gcra_normalize(&limits[i], &res[i].limit);

        res[i].remaining = 0;
        res[i].reset = 0;
        res[i].retry = 0;

        if (blocked) {
            res[i].verdict = DIFY_GCRA_BLOCKED;
            continue;
        }

        t = dify_gcra_interval(&res[i].limit);
        tol = res[i].limit.burst * t;
        d = dify_gcra_owed(&st[i], now, &res[i].limit);

        res[i].verdict = DIFY_GCRA_ALLOWED;

        if (costs[i] > res[i].limit.burst) {
            res[i].verdict = DIFY_GCRA_NEVER;
            all = 0;

        } else if (d + costs[i] * t > tol) {    /* cost * t <= tol */
            res[i].verdict = DIFY_GCRA_LIMITED;
            res[i].retry = d + costs[i] * t - tol;
            all = 0;
        }

        res[i].reset = d;
    }

    if (blocked) {
        return 0;
    }

    for (i = 0; i < n; i++) {
        t = dify_gcra_interval(&res[i].limit);
        tol = res[i].limit.burst * t;
        d = res[i].reset;

        if (all) {
            /* the script writes no state when d is 0: the same */

            d += costs[i] * t;
            st[i].tat = (int64_t) ((uint64_t) now + d);
            st[i].interval = t;
        }

        res[i].reset = d;
        res[i].remaining = (tol - d) / t;
    }

    return all;
}


int
dify_gcra_refund(dify_gcra_state_t *st, int64_t now, uint64_t cost,
    uint64_t interval)
{
    uint64_t  t, d, back;

    if (st->tat <= now) {
        return 1;
    }

    t = st->interval ? st->interval : interval;

    if (cost > DIFY_GCRA_MAX_BURST) {
        cost = DIFY_GCRA_MAX_BURST;
    }

    d = (uint64_t) st->tat - (uint64_t) now;
    back = cost * t;

    if (back >= d) {
        st->tat = now;
        return 1;
    }

    st->tat -= (int64_t) back;
    st->interval = t;

    return 0;
}


int
dify_gcra_charged(const dify_gcra_result_t *res, size_t n)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        if (res[i].verdict != DIFY_GCRA_ALLOWED) {
            return 0;
        }
    }

    return n > 0;
}


int
dify_gcra_valid_name(const unsigned char *p, size_t len)
{
    size_t  i;

    if (len == 0 || len > DIFY_GCRA_MAX_NAME) {
        return -1;
    }

    for (i = 0; i < len; i++) {
        if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z')
              || (p[i] >= '0' && p[i] <= '9') || p[i] == '_' || p[i] == '-'))
        {
            return -1;
        }
    }

    return 0;
}


dify_reply_rc_e
dify_gcra_parse_reply(const redisReply *reply, dify_gcra_result_t *res,
    const char **err, size_t *err_len)
{
    return dify_gcra_parse_replies(reply, res, 1, err, err_len);
}


dify_reply_rc_e
dify_gcra_parse_replies(const redisReply *reply, dify_gcra_result_t *res,
    size_t n, const char **err, size_t *err_len)
{
    const char       *e;
    dify_reply_rc_e   rc;

    if (reply == NULL) {
        e = "no reply";
        goto failed;
    }

    if (reply->type == REDIS_REPLY_ERROR) {

        if (reply->str == NULL) {
            e = "error reply without a message";
            goto failed;
        }

        rc = DIFY_REPLY_ERROR;

        if (reply->len >= sizeof("NOSCRIPT") - 1
            && memcmp(reply->str, "NOSCRIPT", sizeof("NOSCRIPT") - 1) == 0)
        {
            rc = DIFY_REPLY_NOSCRIPT;
        }

        if (err != NULL) {
            *err = reply->str;
        }

        if (err_len != NULL) {
            *err_len = reply->len;
        }

        return rc;
    }

    if (reply->type != REDIS_REPLY_ARRAY) {
        e = "reply is not an array";
        goto failed;
    }

    if (n == 0 || n > DIFY_GCRA_MAX_LIMITS
        || reply->elements != 7 * n || reply->element == NULL)
    {
        e = (n == 1) ? "reply is not an array of 7 elements"
                     : "reply is not an array of 7 elements per limit";
        goto failed;
    }

    /* charged, all allowed; not charged: the allowed ones owe what they did */

    if (dify_gcra_parse_group(reply->element, DIFY_GCRA_OP_CHARGE, n, res, &e)
        == DIFY_REPLY_OK)
    {
        return DIFY_REPLY_OK;
    }

failed:

    if (err != NULL) {
        *err = e;
    }

    if (err_len != NULL) {
        *err_len = strlen(e);
    }

    return DIFY_REPLY_ERROR;
}


size_t
dify_gcra_reply_width(int op, size_t n)
{
    return (op == DIFY_GCRA_OP_REFUND) ? 1 : 7 * n;
}


dify_reply_rc_e
dify_gcra_parse_group(redisReply **element, int op, size_t n,
    dify_gcra_result_t *res, const char **err)
{
    size_t       i, blocked;
    const char  *e;

    if (n == 0 || n > DIFY_GCRA_MAX_LIMITS) {
        e = "a group of no limit, or of too many";
        goto failed;
    }

    if (op == DIFY_GCRA_OP_REFUND) {
        if (element[0] == NULL || element[0]->type != REDIS_REPLY_INTEGER
            || element[0]->integer < 0
            || (unsigned long long) element[0]->integer > n)
        {
            e = "reply to a refund is not a count";
            goto failed;
        }

        return DIFY_REPLY_OK;
    }

    blocked = 0;

    for (i = 0; i < n; i++) {
        if (dify_gcra_parse_one(element + 7 * i, &res[i], &e)
            != DIFY_REPLY_OK)
        {
            goto failed;
        }

        blocked += (res[i].verdict == DIFY_GCRA_BLOCKED);
    }

    /* "blocked" is the key's, for every limit */

    if (blocked != 0 && blocked != n) {
        e = "reply has a key blocked for some limits only";
        goto failed;
    }

    return DIFY_REPLY_OK;

failed:

    if (err != NULL) {
        *err = e;
    }

    return DIFY_REPLY_ERROR;
}


static dify_reply_rc_e
dify_gcra_parse_one(redisReply **element, dify_gcra_result_t *res,
    const char **e)
{
    size_t      i;
    long long   v[7];

    for (i = 0; i < 7; i++) {
        if (element[i] == NULL || element[i]->type != REDIS_REPLY_INTEGER) {
            *e = "reply element is not an integer";
            return DIFY_REPLY_ERROR;
        }

        v[i] = element[i]->integer;
    }

    return dify_gcra_check(v, res, e);
}


/* the 7 values of one limit's reply, checked */

static dify_reply_rc_e
dify_gcra_check(const long long *v, dify_gcra_result_t *res, const char **e)
{
    uint64_t           t, c, tol;
    dify_gcra_limit_t  lim;

    if (v[0] < DIFY_GCRA_NEVER || v[0] > DIFY_GCRA_ALLOWED) {
        *e = "reply has an unknown verdict";
        return DIFY_REPLY_ERROR;
    }

    if (v[1] < 1 || v[1] > DIFY_GCRA_MAX_RATE
        || v[2] < 1 || v[2] > DIFY_GCRA_MAX_PERIOD
        || v[3] < 1 || v[3] > DIFY_GCRA_MAX_BURST)
    {
        *e = "reply has a limit out of range";
        return DIFY_REPLY_ERROR;
    }

    lim.rate = (uint64_t) v[1];
    lim.period = (uint64_t) v[2];
    lim.burst = (uint64_t) v[3];

    t = dify_gcra_interval(&lim);
    tol = lim.burst * t;

    if (tol > DIFY_GCRA_MAX_TOL) {
        *e = "reply has a limit out of range";
        return DIFY_REPLY_ERROR;
    }

    if (v[4] < 0 || (uint64_t) v[4] > lim.burst
        || v[5] < 0 || (uint64_t) v[5] > tol
        || v[6] < 0 || (uint64_t) v[6] > tol)
    {
        *e = "reply has a state out of range";
        return DIFY_REPLY_ERROR;
    }

    /* the relations the script's arithmetic guarantees */

    if (v[0] == DIFY_GCRA_BLOCKED) {
        if (v[4] != 0 || v[5] != 0 || v[6] != 0) {
            *e = "reply of a blocked key has a state";
            return DIFY_REPLY_ERROR;
        }

    } else if ((uint64_t) v[4] != (tol - (uint64_t) v[5]) / t
               || (v[0] == DIFY_GCRA_LIMITED) != (v[6] != 0))
    {
        *e = "reply has an inconsistent state";
        return DIFY_REPLY_ERROR;

    } else if (v[0] == DIFY_GCRA_LIMITED) {

        /*
         * retry = reset + c * T - tol for a cost c that did not fit,
         * remaining < c <= burst; so never before the header's "t"
         */

        c = (uint64_t) v[6] + (tol - (uint64_t) v[5]);

        if (c % t != 0 || c / t <= (uint64_t) v[4] || c / t > lim.burst) {
            *e = "reply has an inconsistent retry";
            return DIFY_REPLY_ERROR;
        }
    }

    res->verdict = (dify_gcra_verdict_e) v[0];
    res->limit = lim;
    res->remaining = (uint64_t) v[4];
    res->reset = (uint64_t) v[5];
    res->retry = (uint64_t) v[6];

    return DIFY_REPLY_OK;
}


int
dify_gcra_parse_rate(const unsigned char *p, size_t len, uint64_t *rate,
    uint64_t *period)
{
    uint64_t              n;
    const unsigned char  *last;

    /* the script's pattern: ^(%d+) *r?/([smhd])$ */

    if (p == NULL || len == 0 || *p < '0' || *p > '9') {
        return -1;
    }

    last = p + len;
    n = 0;

    while (p < last && *p >= '0' && *p <= '9') {

        /* once above the maximum, n stays above it without overflow */

        if (n <= DIFY_GCRA_MAX_RATE) {
            n = n * 10 + (*p - '0');
        }

        p++;
    }

    if (n < 1 || n > DIFY_GCRA_MAX_RATE) {
        return -1;
    }

    while (p < last && *p == ' ') {
        p++;
    }

    if (p < last && *p == 'r') {
        p++;
    }

    if (p == last || *p++ != '/' || last - p != 1) {
        return -1;
    }

    switch (*p) {

    case 's':
        *period = 1;
        break;

    case 'm':
        *period = 60;
        break;

    case 'h':
        *period = 3600;
        break;

    case 'd':
        *period = 86400;
        break;

    default:
        return -1;
    }

    *rate = n;

    return 0;
}


/*
 * The fields of draft-ietf-httpapi-ratelimit-headers-11, one member of
 * each field's List per limit, named by the limit's name as a String
 * (section 3: the policy Item "MUST be a String"); the limit "default"
 * alone gives:
 *
 *   RateLimit-Policy: "default";q=<burst>;w=<seconds>
 *
 * q is the bucket's capacity in units (what can be spent at once from
 * a full bucket) and w the time in which an empty bucket fills again,
 * burst * T, rounded up to whole seconds (section 3.1.3: a non-zero
 * integer, no sub-second precision).  Rounding up can only understate
 * the rate.  There is no "qu": with "cost documents" a unit is a
 * document, which the registry has no name for.
 *
 *   RateLimit: "default";r=<remaining>;t=<seconds>
 *
 * r is the units spendable now.  t is the draft's "effective window"
 * (section 4.1.2, "the number of seconds within which the client can
 * use no more than the available quota"; draft 10 put it as "the
 * number of seconds until additional quota ... is made available"):
 * the time until the unit after the r spendable ones comes back, i.e.
 * d + (r + 1) * T - tol, which lies in (0, T], rounded up.  It is not
 * the time until the bucket is full: section 6 says Retry-After
 * "SHOULD NOT reference a point in time earlier than the end of the
 * effective window", and a limited request has c > r, so its retry
 * d + c * T - tol is never shorter than this t, while the time until
 * full usually is longer.
 */

size_t
dify_gcra_policy_header(char *buf, size_t size,
    const dify_gcra_limit_t *limit)
{
    return dify_gcra_policy_item(buf, size, DIFY_GCRA_DEFAULT,
                                 sizeof(DIFY_GCRA_DEFAULT) - 1, limit);
}


size_t
dify_gcra_ratelimit_header(char *buf, size_t size,
    const dify_gcra_result_t *res)
{
    return dify_gcra_ratelimit_item(buf, size, DIFY_GCRA_DEFAULT,
                                    sizeof(DIFY_GCRA_DEFAULT) - 1, res);
}


size_t
dify_gcra_policy_item(char *buf, size_t size, const char *name,
    size_t name_len, const dify_gcra_limit_t *limit)
{
    uint64_t           w;
    dify_gcra_limit_t  lim;

    if (buf == NULL || size == 0 || name_len > DIFY_GCRA_MAX_NAME) {
        return 0;
    }

    dify_gcra_normalize(limit, &lim);

    w = dify_gcra_ceil_sec(lim.burst * dify_gcra_interval(&lim));

    return dify_gcra_item(buf, size, name, name_len, 'q', lim.burst, 'w', w);
}


size_t
dify_gcra_ratelimit_item(char *buf, size_t size, const char *name,
    size_t name_len, const dify_gcra_result_t *res)
{
    uint64_t           t, tol, r, d, next;
    dify_gcra_limit_t  lim;

    if (buf == NULL || size == 0 || name_len > DIFY_GCRA_MAX_NAME) {
        return 0;
    }

    dify_gcra_normalize(&res->limit, &lim);

    t = dify_gcra_interval(&lim);
    tol = lim.burst * t;

    r = res->remaining < lim.burst ? res->remaining : lim.burst;
    d = res->reset < tol ? res->reset : tol;

    /* d + (r + 1) * T - tol; 0 for a result without a state (blocked) */

    next = d + (r + 1) * t;
    next = next > tol ? dify_gcra_ceil_sec(next - tol) : 0;

    return dify_gcra_item(buf, size, name, name_len, 'r', r, 't', next);
}


/*
 * "\"NAME\";A=a;B=b", written without printf (each response has one per
 * limit); 0 when size is too small, as snprintf() would be.
 */

static size_t
dify_gcra_item(char *buf, size_t size, const char *name, size_t name_len,
    char ka, uint64_t a, char kb, uint64_t b)
{
    char      *p, digits[2][20];
    size_t     len, la, lb;
    uint64_t   v;

    la = 0;
    v = a;

    do {
        digits[0][sizeof(digits[0]) - ++la] = (char) ('0' + v % 10);
        v /= 10;
    } while (v);

    lb = 0;
    v = b;

    do {
        digits[1][sizeof(digits[1]) - ++lb] = (char) ('0' + v % 10);
        v /= 10;
    } while (v);

    len = 1 + name_len + 1 + 3 + la + 3 + lb;

    if (len >= size) {
        return 0;
    }

    p = buf;
    *p++ = '"';
    memcpy(p, name, name_len);
    p += name_len;
    *p++ = '"';
    *p++ = ';';
    *p++ = ka;
    *p++ = '=';
    memcpy(p, digits[0] + sizeof(digits[0]) - la, la);
    p += la;
    *p++ = ';';
    *p++ = kb;
    *p++ = '=';
    memcpy(p, digits[1] + sizeof(digits[1]) - lb, lb);
    p += lb;
    *p = '\0';

    return len;
}


uint64_t
dify_gcra_retry_seconds(const dify_gcra_result_t *res)
{
    uint64_t  s;

    s = dify_gcra_ceil_sec(res->retry);

    return s ? s : 1;
}


/*
 * Out of range values are clamped, the same way the script clamps its
 * ARGV: rate and burst to [1, 1000000], period to [1, 86400], then the
 * burst to what fills within DIFY_GCRA_MAX_TOL.
 */

void
dify_gcra_normalize(const dify_gcra_limit_t *limit, dify_gcra_limit_t *lim)
{
    uint64_t  t;

    *lim = *limit;

    if (lim->rate < 1) {
        lim->rate = 1;

    } else if (lim->rate > DIFY_GCRA_MAX_RATE) {
        lim->rate = DIFY_GCRA_MAX_RATE;
    }

    if (lim->period < 1) {
        lim->period = 1;

    } else if (lim->period > DIFY_GCRA_MAX_PERIOD) {
        lim->period = DIFY_GCRA_MAX_PERIOD;
    }

    if (lim->burst < 1) {
        lim->burst = 1;

    } else if (lim->burst > DIFY_GCRA_MAX_BURST) {
        lim->burst = DIFY_GCRA_MAX_BURST;
    }

    t = lim->period * DIFY_GCRA_USEC / lim->rate;
    t = t ? t : 1;

    if (lim->burst > DIFY_GCRA_MAX_TOL / t) {
        lim->burst = DIFY_GCRA_MAX_TOL / t;
    }
}


static uint64_t
dify_gcra_ceil_sec(uint64_t us)
{
    return us / DIFY_GCRA_USEC + (us % DIFY_GCRA_USEC != 0);
}
