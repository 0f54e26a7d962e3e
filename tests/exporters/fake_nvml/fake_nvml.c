/*
 * A stand-in libnvidia-ml.so.1 for tests and benchmarks on machines without an NVIDIA GPU.
 *
 * It exports the NVML entry points that nvidia-ml-py resolves for the boxwatch GPU exporter and
 * answers from a fixed fixture. The binding loads it with ctypes exactly as it loads the driver's
 * library, so the exporter's real code path runs unchanged. Struct layouts follow nvml.h (and
 * the ctypes mirrors in pynvml.py): nvmlMemory_t, nvmlUtilization_t, nvmlPciInfo_t (v3),
 * nvmlProcessInfo_v2_t (== v3).
 *
 * Behaviour is configured through the environment, read at nvmlInit:
 *   FAKE_NVML_GPUS=N             number of GPUs (default 2, at most 64). Even indexes are an
 *                                "NVIDIA RTX A5000" (ECC supported), odd ones an
 *                                "NVIDIA GeForce RTX 3060" (ECC -> NVML_ERROR_NOT_SUPPORTED).
 *   FAKE_NVML_LOST_FILE=PATH     while PATH exists, every call for the GPU named by
 *   FAKE_NVML_LOST_GPU=I         FAKE_NVML_LOST_GPU (default 1), nvmlDeviceGetHandleByIndex
 *                                included, returns NVML_ERROR_GPU_IS_LOST.
 *   FAKE_NVML_PROCS=g:pid:bytes,...  compute processes per GPU index.
 *   FAKE_NVML_INIT_ERROR=CODE    nvmlInit fails with CODE (e.g. 9, NVML_ERROR_DRIVER_NOT_LOADED).
 *   FAKE_NVML_DELAY_US=US        every device query sleeps US microseconds (a slow driver).
 *   FAKE_NVML_DRIVER_GONE_FILE=PATH  while PATH exists, nvmlInit and every device call return
 *                                NVML_ERROR_DRIVER_NOT_LOADED (the kernel module was unloaded).
 *   FAKE_NVML_PAGE_RETIREMENT_GPU=I  GPU I behaves like a pre-Ampere data-centre card: it answers
 *                                the page-retirement calls and not row remapping (the other
 *                                A5000s remap rows; the GeForce cards have neither).
 *   FAKE_NVML_TEMP_FILE=PATH     the GPU core temperature of GPU 0, read from PATH at every
 *                                call when it holds a number (to drive a temperature over time).
 *
 * Compiled with -DFAKE_NVML_OLD_DRIVER it lacks nvmlDeviceGetCurrentClocksEventReasons and
 * nvmlDeviceGetTemperatureV, as older drivers do (they only have the ...ClocksThrottleReasons
 * and nvmlDeviceGetTemperature names).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25

#define MAX_GPUS 64
#define MAX_PROCS 256

typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_v2_t;

typedef struct { unsigned long long referenceTime, violationTime; } nvmlViolationTime_t;
typedef union { double d; unsigned int ui; unsigned long ul; unsigned long long ull; long long sll;
                int si; unsigned short us; } nvmlValue_t;
typedef struct {
    unsigned int fieldId, scopeId;
    long long timestamp, latencyUsec;
    unsigned int valueType;
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t;
#define NVML_FI_DEV_MEMORY_TEMP 82
#define NVML_VALUE_TYPE_UNSIGNED_INT 1
#define NVML_PERF_POLICY_COUNT 12

typedef struct fake_gpu {
    unsigned int index;
    int ecc;  /* 0: ECC not supported */
    int remapping, page_retirement;  /* which of the two memory-repair schemes the card has */
    const char *name;
    char uuid[96];
    unsigned long long mem_total, mem_used;
    unsigned int util_gpu, util_mem, temp, power_mw, limit_mw, fan, sm_mhz, mem_mhz, tx_kbs, rx_kbs;
    unsigned long long energy_mj, throttle, ecc_counts[2][2]; /* [error type][counter type] */
    unsigned int link_gen, link_gen_max, link_width, link_width_max, replays, pstate;
    unsigned int temp_shutdown, temp_slowdown, mem_temp;  /* mem_temp 0: not supported */
    unsigned int remapped[4];        /* correctable, uncorrectable, pending, failure */
    unsigned int retired[2], retired_pending;  /* pages retired for multiple SBE, for DBE */
    unsigned long long violation_ns[NVML_PERF_POLICY_COUNT];  /* 0: policy not supported */
} fake_gpu;

typedef struct { unsigned int gpu, pid; unsigned long long bytes; } fake_proc;

static fake_gpu gpus[MAX_GPUS];
static unsigned int gpu_count;
static fake_proc procs[MAX_PROCS];
static unsigned int proc_count;
static int initialised;
static const char *lost_file;
static unsigned int lost_gpu = 1;
static useconds_t delay_us;

static int driver_gone(void) {
    const char *path = getenv("FAKE_NVML_DRIVER_GONE_FILE");
    return path && *path && access(path, F_OK) == 0;
}

static void setup_gpu(fake_gpu *g, unsigned int i) {
    memset(g, 0, sizeof *g);
    g->index = i;
    snprintf(g->uuid, sizeof g->uuid, "GPU-%08x-1b2c-4d3e-8f40-%012x", 0x5eed0000u + i, i);
    if (i % 2 == 0) {
        g->name = "NVIDIA RTX A5000";
        g->ecc = 1;
        g->mem_total = 25757220864ULL;  /* 24564 MiB */
        g->mem_used = 10737418240ULL;   /* 10 GiB */
        g->util_gpu = 87; g->util_mem = 41; g->temp = 71;
        g->power_mw = 182345; g->limit_mw = 230000; g->energy_mj = 123456789ULL;
        g->fan = 55; g->sm_mhz = 1695; g->mem_mhz = 8001;
        g->throttle = 0x4 | 0x20;       /* SW power cap, SW thermal slowdown */
        g->tx_kbs = 12000; g->rx_kbs = 345000;
        g->ecc_counts[0][0] = 3; g->ecc_counts[1][0] = 0;   /* volatile: corrected, uncorrected */
        g->ecc_counts[0][1] = 17; g->ecc_counts[1][1] = 1;  /* aggregate */
        g->link_gen = 4; g->link_gen_max = 4; g->link_width = 16; g->link_width_max = 16;
        g->replays = 0; g->pstate = 0;
        g->temp_shutdown = 98; g->temp_slowdown = 95; g->mem_temp = 84;
        g->remapping = 1;
        g->remapped[0] = 2;             /* two rows remapped for correctable errors */
        g->violation_ns[0] = 61500000000ULL;  /* power: 61.5 s */
        g->violation_ns[1] = 2250000000ULL;   /* thermal: 2.25 s */
        g->violation_ns[3] = 0; g->violation_ns[4] = 0; g->violation_ns[5] = 0;
    } else {
        g->name = "NVIDIA GeForce RTX 3060";
        g->mem_total = 12884901888ULL;  /* 12288 MiB */
        g->mem_used = 1073741824ULL;    /* 1 GiB */
        g->util_gpu = 3; g->util_mem = 1; g->temp = 45;
        g->power_mw = 21500; g->limit_mw = 170000; g->energy_mj = 9876543ULL;
        g->fan = 30; g->sm_mhz = 210; g->mem_mhz = 405;
        g->throttle = 0x1;              /* GPU idle */
        g->tx_kbs = 800; g->rx_kbs = 1500;
        /* idle: the link drops to gen 1; trained at x8 in a x16 slot (a riser, a dirty contact) */
        g->link_gen = 1; g->link_gen_max = 4; g->link_width = 8; g->link_width_max = 16;
        g->replays = 12; g->pstate = 8;
        g->temp_shutdown = 98; g->temp_slowdown = 93;
        g->violation_ns[0] = 0; g->violation_ns[1] = 0;
    }
}

static void setup_page_retirement(fake_gpu *g) {
    g->name = "Tesla V100-PCIE-16GB";
    g->remapping = 0;
    g->page_retirement = 1;
    g->retired[0] = 2; g->retired[1] = 1; g->retired_pending = 1;
}

static void parse_procs(const char *spec) {
    proc_count = 0;
    while (spec && *spec && proc_count < MAX_PROCS) {
        unsigned int gpu, pid;
        unsigned long long bytes;
        if (sscanf(spec, "%u:%u:%llu", &gpu, &pid, &bytes) == 3) {
            procs[proc_count++] = (fake_proc){gpu, pid, bytes};
        }
        spec = strchr(spec, ',');
        if (spec) spec++;
    }
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    const char *err = getenv("FAKE_NVML_INIT_ERROR");
    if (err && *err) return atoi(err);
    if (driver_gone()) return NVML_ERROR_DRIVER_NOT_LOADED;
    const char *n = getenv("FAKE_NVML_GPUS");
    gpu_count = n ? (unsigned int)atoi(n) : 2;
    if (gpu_count > MAX_GPUS) gpu_count = MAX_GPUS;
    for (unsigned int i = 0; i < gpu_count; i++) setup_gpu(&gpus[i], i);
    lost_file = getenv("FAKE_NVML_LOST_FILE");
    const char *lg = getenv("FAKE_NVML_LOST_GPU");
    if (lg && *lg) lost_gpu = (unsigned int)atoi(lg);
    const char *d = getenv("FAKE_NVML_DELAY_US");
    delay_us = d ? (useconds_t)atoi(d) : 0;
    parse_procs(getenv("FAKE_NVML_PROCS"));
    const char *pr = getenv("FAKE_NVML_PAGE_RETIREMENT_GPU");
    if (pr && *pr && (unsigned int)atoi(pr) < gpu_count) setup_page_retirement(&gpus[atoi(pr)]);
    initialised = 1;
    return NVML_SUCCESS;
}


nvmlReturn_t nvmlShutdown(void) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    initialised = 0;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

static int copy_string(char *dst, unsigned int length, const char *src) {
    if (!dst || strlen(src) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    return copy_string(version, length, "550.54.14");
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = gpu_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, fake_gpu **device) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (index >= gpu_count || !device) return NVML_ERROR_INVALID_ARGUMENT;
    if (driver_gone()) return NVML_ERROR_DRIVER_NOT_LOADED;
    if (lost_file && index == lost_gpu && access(lost_file, F_OK) == 0) return NVML_ERROR_GPU_IS_LOST;
    *device = &gpus[index];
    return NVML_SUCCESS;
}

/* Common prologue of every device query: initialised, valid handle, simulated latency, lost GPU. */
static nvmlReturn_t check(const fake_gpu *g, const void *out) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!g || g < gpus || g >= gpus + gpu_count || !out) return NVML_ERROR_INVALID_ARGUMENT;
    if (delay_us) usleep(delay_us);
    if (driver_gone()) return NVML_ERROR_DRIVER_NOT_LOADED;
    if (lost_file && g->index == lost_gpu && access(lost_file, F_OK) == 0) return NVML_ERROR_GPU_IS_LOST;
    return NVML_SUCCESS;
}

#define CHECK(g, out) do { nvmlReturn_t r_ = check((g), (out)); if (r_ != NVML_SUCCESS) return r_; } while (0)

nvmlReturn_t nvmlDeviceGetUUID(fake_gpu *g, char *uuid, unsigned int length) {
    CHECK(g, uuid);
    return copy_string(uuid, length, g->uuid);
}

nvmlReturn_t nvmlDeviceGetName(fake_gpu *g, char *name, unsigned int length) {
    CHECK(g, name);
    return copy_string(name, length, g->name);
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(fake_gpu *g, nvmlPciInfo_t *pci) {
    CHECK(g, pci);
    memset(pci, 0, sizeof *pci);
    pci->bus = g->index + 1;
    pci->pciDeviceId = g->ecc ? 0x223110DE : 0x250310DE;
    snprintf(pci->busId, sizeof pci->busId, "00000000:%02X:00.0", pci->bus);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "0000:%02X:00.0", pci->bus);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(fake_gpu *g, nvmlUtilization_t *u) {
    CHECK(g, u);
    u->gpu = g->util_gpu;
    u->memory = g->util_mem;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(fake_gpu *g, nvmlMemory_t *m) {
    CHECK(g, m);
    m->total = g->mem_total;
    m->used = g->mem_used;
    m->free = g->mem_total - g->mem_used;
    return NVML_SUCCESS;
}

/* GPU 0's temperature from FAKE_NVML_TEMP_FILE when it holds a number, else the fixture's. */
static unsigned int core_temperature(const fake_gpu *g) {
    const char *path = getenv("FAKE_NVML_TEMP_FILE");
    if (g->index != 0 || !path || !*path) return g->temp;
    FILE *f = fopen(path, "r");
    if (!f) return g->temp;
    unsigned int t;
    int ok = fscanf(f, "%u", &t) == 1;
    fclose(f);
    return ok ? t : g->temp;
}

nvmlReturn_t nvmlDeviceGetTemperature(fake_gpu *g, int sensor, unsigned int *temp) {
    CHECK(g, temp);
    if (sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    *temp = core_temperature(g);
    return NVML_SUCCESS;
}

#ifndef FAKE_NVML_OLD_DRIVER
typedef struct { unsigned int version; int sensorType; int temperature; } nvmlTemperature_v1_t;
#define NVML_TEMPERATURE_V1 (unsigned int)(sizeof(nvmlTemperature_v1_t) | (1 << 24))

nvmlReturn_t nvmlDeviceGetTemperatureV(fake_gpu *g, nvmlTemperature_v1_t *t) {
    CHECK(g, t);
    if (t->version != NVML_TEMPERATURE_V1) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (t->sensorType != 0) return NVML_ERROR_INVALID_ARGUMENT;
    t->temperature = (int)core_temperature(g);
    return NVML_SUCCESS;
}
#endif

nvmlReturn_t nvmlDeviceGetPowerUsage(fake_gpu *g, unsigned int *mw) {
    CHECK(g, mw);
    *mw = g->power_mw;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(fake_gpu *g, unsigned int *mw) {
    CHECK(g, mw);
    *mw = g->limit_mw;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(fake_gpu *g, unsigned long long *mj) {
    CHECK(g, mj);
    *mj = g->energy_mj;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetFanSpeed(fake_gpu *g, unsigned int *percent) {
    CHECK(g, percent);
    *percent = g->fan;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetClockInfo(fake_gpu *g, int type, unsigned int *mhz) {
    CHECK(g, mhz);
    switch (type) {
    case 1: *mhz = g->sm_mhz; return NVML_SUCCESS;   /* NVML_CLOCK_SM */
    case 2: *mhz = g->mem_mhz; return NVML_SUCCESS;  /* NVML_CLOCK_MEM */
    default: return NVML_ERROR_NOT_SUPPORTED;
    }
}

static nvmlReturn_t clocks_event_reasons(fake_gpu *g, unsigned long long *reasons) {
    CHECK(g, reasons);
    *reasons = g->throttle;
    return NVML_SUCCESS;
}

#ifndef FAKE_NVML_OLD_DRIVER
nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(fake_gpu *g, unsigned long long *reasons) {
    return clocks_event_reasons(g, reasons);
}
#endif

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(fake_gpu *g, unsigned long long *reasons) {
    return clocks_event_reasons(g, reasons);
}

nvmlReturn_t nvmlDeviceGetPcieThroughput(fake_gpu *g, int counter, unsigned int *kbs) {
    CHECK(g, kbs);
    switch (counter) {
    case 0: *kbs = g->tx_kbs; return NVML_SUCCESS;  /* NVML_PCIE_UTIL_TX_BYTES */
    case 1: *kbs = g->rx_kbs; return NVML_SUCCESS;  /* NVML_PCIE_UTIL_RX_BYTES */
    default: return NVML_ERROR_INVALID_ARGUMENT;
    }
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(fake_gpu *g, int error_type, int counter_type,
                                         unsigned long long *count) {
    CHECK(g, count);
    if (!g->ecc) return NVML_ERROR_NOT_SUPPORTED;
    if (error_type < 0 || error_type > 1 || counter_type < 0 || counter_type > 1)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = g->ecc_counts[error_type][counter_type];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(fake_gpu *g, unsigned int *count,
                                                     nvmlProcessInfo_v2_t *infos) {
    CHECK(g, count);
    unsigned int n = 0;
    for (unsigned int i = 0; i < proc_count; i++) n += procs[i].gpu == g->index;
    if (n == 0) {
        *count = 0;
        return NVML_SUCCESS;
    }
    if (!infos || *count < n) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    unsigned int k = 0;
    for (unsigned int i = 0; i < proc_count; i++) {
        if (procs[i].gpu != g->index) continue;
        infos[k].pid = procs[i].pid;
        infos[k].usedGpuMemory = procs[i].bytes;
        infos[k].gpuInstanceId = 0xFFFFFFFFu;
        infos[k].computeInstanceId = 0xFFFFFFFFu;
        k++;
    }
    *count = n;
    return NVML_SUCCESS;
}

/* ---------------------------------------------------------------- health: PCIe, memory, limits */

/* A query that answers one unsigned field of the fixture. */
#define UINT_QUERY(function, field)                                   \
    nvmlReturn_t function(fake_gpu *g, unsigned int *value) {         \
        CHECK(g, value);                                              \
        *value = g->field;                                            \
        return NVML_SUCCESS;                                          \
    }

UINT_QUERY(nvmlDeviceGetCurrPcieLinkGeneration, link_gen)
UINT_QUERY(nvmlDeviceGetMaxPcieLinkGeneration, link_gen_max)
UINT_QUERY(nvmlDeviceGetCurrPcieLinkWidth, link_width)
UINT_QUERY(nvmlDeviceGetMaxPcieLinkWidth, link_width_max)
UINT_QUERY(nvmlDeviceGetPcieReplayCounter, replays)
UINT_QUERY(nvmlDeviceGetPerformanceState, pstate)

nvmlReturn_t nvmlDeviceGetTemperatureThreshold(fake_gpu *g, int threshold, unsigned int *temp) {
    CHECK(g, temp);
    switch (threshold) {
    case 0: *temp = g->temp_shutdown; return NVML_SUCCESS;  /* NVML_TEMPERATURE_THRESHOLD_SHUTDOWN */
    case 1: *temp = g->temp_slowdown; return NVML_SUCCESS;  /* NVML_TEMPERATURE_THRESHOLD_SLOWDOWN */
    default: return NVML_ERROR_NOT_SUPPORTED;
    }
}

nvmlReturn_t nvmlDeviceGetRemappedRows(fake_gpu *g, unsigned int *corr, unsigned int *unc,
                                       unsigned int *pending, unsigned int *failure) {
    CHECK(g, corr);
    if (!unc || !pending || !failure) return NVML_ERROR_INVALID_ARGUMENT;
    if (!g->remapping) return NVML_ERROR_NOT_SUPPORTED;
    *corr = g->remapped[0];
    *unc = g->remapped[1];
    *pending = g->remapped[2];
    *failure = g->remapped[3];
    return NVML_SUCCESS;
}

/* Page addresses are made up; the binding sizes its buffer with a first call (addresses NULL). */
nvmlReturn_t nvmlDeviceGetRetiredPages(fake_gpu *g, int cause, unsigned int *count,
                                       unsigned long long *addresses) {
    CHECK(g, count);
    if (!g->page_retirement) return NVML_ERROR_NOT_SUPPORTED;
    if (cause < 0 || cause > 1) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int n = g->retired[cause];
    if (!addresses || *count < n) {
        *count = n;
        return n ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
    }
    for (unsigned int i = 0; i < n; i++) addresses[i] = 0x7f0000ULL + 0x1000ULL * (i + 16ULL * cause);
    *count = n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(fake_gpu *g, unsigned int *pending) {
    CHECK(g, pending);
    if (!g->page_retirement) return NVML_ERROR_NOT_SUPPORTED;
    *pending = g->retired_pending;
    return NVML_SUCCESS;
}

/* Power (0) and thermal (1) on every card; board limit, low utilisation and reliability (3-5)
   on the A5000s only; sync boost (2) and the others nowhere. */
nvmlReturn_t nvmlDeviceGetViolationStatus(fake_gpu *g, int policy, nvmlViolationTime_t *v) {
    CHECK(g, v);
    if (policy < 0 || policy >= NVML_PERF_POLICY_COUNT) return NVML_ERROR_INVALID_ARGUMENT;
    int supported = policy <= 1 || (g->ecc && policy >= 3 && policy <= 5);
    if (!supported) return NVML_ERROR_NOT_SUPPORTED;
    v->referenceTime = 1700000000000000ULL;  /* µs */
    v->violationTime = g->violation_ns[policy];
    return NVML_SUCCESS;
}

/* Only NVML_FI_DEV_MEMORY_TEMP; each field carries its own return code, as in the driver. */
nvmlReturn_t nvmlDeviceGetFieldValues(fake_gpu *g, int count, nvmlFieldValue_t *values) {
    CHECK(g, values);
    for (int i = 0; i < count; i++) {
        nvmlFieldValue_t *f = &values[i];
        f->timestamp = 1700000000000000LL;
        f->latencyUsec = 0;
        if (f->fieldId == NVML_FI_DEV_MEMORY_TEMP && g->mem_temp) {
            f->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
            f->value.ui = g->mem_temp;
            f->nvmlReturn = NVML_SUCCESS;
        } else {
            f->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        }
    }
    return NVML_SUCCESS;
}
