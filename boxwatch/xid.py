"""What NVIDIA's Xid codes mean: shared by the journald exporter (parsing) and the detector (cause hints).

The catalog follows NVIDIA's "Xid Errors" documentation (docs.nvidia.com/deploy/xid-errors); the
``action`` column is the usual first response, not a diagnosis.
"""

from __future__ import annotations

from typing import NamedTuple


class XidCode(NamedTuple):
    name: str
    meaning: str
    action: str


CATALOG: dict[int, XidCode] = {
    13: XidCode("graphics_engine_exception",
                "Graphics engine exception: usually an application fault (illegal address or instruction "
                "in a kernel); can also be a driver or hardware problem.",
                "Run the application under compute-sanitizer; if it repeats across applications, check the GPU."),
    31: XidCode("gpu_memory_page_fault",
                "GPU memory page fault (MMU fault): an application accessed an invalid GPU address.",
                "Debug the application; repeated faults across applications point at driver or hardware."),
    43: XidCode("gpu_stopped_processing",
                "GPU stopped processing: a user application faulted and its context was torn down.",
                "Application error; the GPU stays usable."),
    45: XidCode("preemptive_cleanup",
                "Preemptive cleanup, due to previous errors: work was killed (Ctrl-C, process exit, or an "
                "earlier Xid).",
                "Look for the Xid that preceded it."),
    48: XidCode("double_bit_ecc_error",
                "Double-bit (uncorrectable) ECC error in GPU memory.",
                "Reset the GPU; if it persists, retire pages / replace the GPU."),
    61: XidCode("internal_microcontroller_breakpoint",
                "Internal micro-controller breakpoint/warning (PMU firmware).",
                "Reset the GPU; update the driver; report to NVIDIA if repeated."),
    62: XidCode("internal_microcontroller_halt",
                "Internal micro-controller halt (PMU firmware), newer drivers report it with a thermal cause.",
                "Reset the GPU; check cooling; update the driver."),
    63: XidCode("ecc_page_retirement_or_row_remap",
                "ECC page retirement or row remapping recorded (a memory row was retired/remapped).",
                "Informational; reset the GPU at a convenient time so the remap takes effect."),
    64: XidCode("ecc_page_retirement_or_row_remap_failure",
                "ECC page retirement or row remapping failed.",
                "Reset the GPU; if it repeats, the GPU likely needs replacing."),
    68: XidCode("nvdec_error",
                "Video decoder (NVDEC) exception.",
                "Usually application or driver; reset the GPU if video decoding stays broken."),
    69: XidCode("graphics_engine_class_error",
                "Graphics engine class error: the GPU was given an invalid command.",
                "Application or driver error; update the driver."),
    74: XidCode("nvlink_error",
                "NVLink error: a link between GPUs (or GPU and switch) reported a fault.",
                "Check the NVLink bridge / cabling; reset the GPUs."),
    79: XidCode("gpu_fallen_off_bus",
                "GPU has fallen off the bus: the GPU no longer responds on PCIe.",
                "Critical: drain the node, check power, PCIe seating and thermals; a reboot is needed."),
    92: XidCode("high_single_bit_ecc_rate",
                "High single-bit ECC error rate.",
                "Watch ECC counters; schedule a GPU reset / replacement if it keeps rising."),
    94: XidCode("contained_ecc_error",
                "Contained ECC error: an uncorrectable error was contained to the affected applications.",
                "Restart the affected applications; reset the GPU when convenient."),
    95: XidCode("uncontained_ecc_error",
                "Uncontained ECC error: an uncorrectable error affected all applications on the GPU.",
                "Reset the GPU now; every application on it was affected."),
    119: XidCode("gsp_rpc_timeout",
                 "GSP (GPU System Processor) RPC timeout: the GPU firmware did not answer the driver.",
                 "Reset the GPU; update the driver/firmware; report to NVIDIA if repeated."),
    120: XidCode("gsp_error",
                 "GSP (GPU System Processor) error: the GPU firmware reported a fault.",
                 "Reset the GPU; update the driver/firmware."),
}


def describe(xid: int) -> str:
    code = CATALOG.get(xid)
    return code.meaning if code else "Not in boxwatch's catalog; see NVIDIA's Xid documentation."

