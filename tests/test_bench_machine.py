"""Machine description and the tegrastats parser, on lines recorded from Jetson boards."""
from edge.bench.machine import describe_machine, parse_tegrastats, summarise_tegrastats

# Jetson Nano (JetPack 4): rails as current/average without a unit
NANO = ("RAM 2448/3964MB (lfb 2x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
        "CPU [9%@1479,6%@1479,3%@1479,3%@1479] EMC_FREQ 0%@1600 GR3D_FREQ 42%@921 APE 25 PLL@21C "
        "CPU@23.5C PMIC@50C GPU@22.5C AO@29C thermal@23C POM_5V_IN 2135/2135 POM_5V_GPU 412/380 "
        "POM_5V_CPU 412/412")
# Jetson AGX Orin (JetPack 5): rails in mW, GPU load per GPC
ORIN = ("RAM 4722/30536MB (lfb 5403x4MB) SWAP 0/15268MB (cached 0MB) CPU [0%@729,0%@729,2%@729,0%@729,"
        "off,off,off,off,off,off,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 97%@[305,305] VIC_FREQ 729 APE 174 "
        "CV0@-256C CPU@47.343C SOC2@44.562C tj@48.25C VDD_GPU_SOC 6392mW/5392mW VDD_CPU_CV 397mW/397mW "
        "VIN_SYS_5V0 3428mW/3428mW NC 0mW/0mW VDDQ_VDD2_1V8AO 502mW/502mW")


def test_parses_memory_gpu_load_and_power_rails():
    nano = parse_tegrastats(NANO)
    assert (nano.ram_used_mb, nano.ram_total_mb, nano.gpu_load_percent) == (2448, 3964, 42.0)
    assert nano.power_mw == {"POM_5V_IN": 2135, "POM_5V_GPU": 412, "POM_5V_CPU": 412}
    orin = parse_tegrastats(ORIN)
    assert (orin.ram_used_mb, orin.ram_total_mb, orin.gpu_load_percent) == (4722, 30536, 97.0)
    assert orin.power_mw == {"VDD_GPU_SOC": 6392, "VDD_CPU_CV": 397, "VIN_SYS_5V0": 3428, "NC": 0,
                             "VDDQ_VDD2_1V8AO": 502}


def test_summary_takes_peak_memory_and_mean_board_power():
    later = NANO.replace("RAM 2448/", "RAM 2600/").replace("POM_5V_IN 2135/", "POM_5V_IN 2335/")
    s = summarise_tegrastats([parse_tegrastats(NANO), parse_tegrastats(later)])
    assert s["samples"] == 2 and s["ram_used_mb_max"] == 2600
    assert s["board_power_mw_mean"] == 2235.0 and s["power_mw_mean"]["POM_5V_GPU"] == 412.0
    assert summarise_tegrastats([]) is None


def test_a_line_without_tegrastats_fields_gives_nothing():
    empty = parse_tegrastats("tegrastats: not supported on this board")
    assert (empty.ram_used_mb, empty.gpu_load_percent, empty.power_mw) == (None, None, {})


def test_machine_description_names_the_cpu_and_runtime():
    m = describe_machine()
    assert m["cores"] >= 1 and 1 <= m["usable_cores"] <= m["cores"]
    assert m["cpu"] and m["onnxruntime"] and "CPUExecutionProvider" in m["onnxruntime_providers"]
